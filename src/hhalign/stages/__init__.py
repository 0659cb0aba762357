"""One module per stage of a run, named as the stage (and its ``hhalign NAME`` subcommand). Each has
``inputs(cfg, run_dir)`` (what it reads) and ``run(cfg, run_dir, *, resume)`` (writes its folder, returns its
manifest); the table of stages, their folders and declared outputs is ``hhalign.engine.table``."""
