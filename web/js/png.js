// Reads the text chunks of a PNG (tEXt, iTXt, zTXt) so a dropped image can bring back the
// workflow it was made with (SaveImage writes it under the keyword "workflow").

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

export async function pngTextChunks(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) throw new Error("not a PNG file");
  const view = new DataView(buffer);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  const out = {};
  let pos = 8;
  while (pos + 8 <= bytes.length) {
    const length = view.getUint32(pos);
    const type = latin1.decode(bytes.subarray(pos + 4, pos + 8));
    const data = bytes.subarray(pos + 8, pos + 8 + length);
    if (type === "IEND") break;
    const nul = data.indexOf(0);
    if (nul > 0) {
      const key = latin1.decode(data.subarray(0, nul));
      if (type === "tEXt") out[key] = latin1.decode(data.subarray(nul + 1));
      else if (type === "zTXt") out[key] = latin1.decode(await inflate(data.subarray(nul + 2)));
      else if (type === "iTXt") {
        const compressed = data[nul + 1] === 1;
        let p = nul + 3;
        p = data.indexOf(0, p) + 1; // language tag
        p = data.indexOf(0, p) + 1; // translated keyword
        const text = data.subarray(p);
        out[key] = utf8.decode(compressed ? await inflate(text) : text);
      }
    }
    pos += 12 + length;
  }
  return out;
}

// The workflow embedded in a PNG file, or null.
export async function workflowFromPng(buffer) {
  const chunks = await pngTextChunks(buffer);
  return chunks.workflow ? JSON.parse(chunks.workflow) : null;
}
