"""Image upscaling networks (ESRGAN-family RRDBNet), their checkpoint layouts and tiled
inference; `nodes.upscale` builds the nodes on top of them."""
