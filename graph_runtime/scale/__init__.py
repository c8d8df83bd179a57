"""Scale-out: the same workflows run on Ray actors, each with an executor and its cache.

`worker` is the actor, `ray_backend` the server's backend over a set of them, `batch` and
`sweep` the headless `noodle batch`. Ray is imported only by the modules that need it, so
the local backend never loads it.
"""
