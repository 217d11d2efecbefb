"""The DeepSpeed JSON of a job: finding a file (``files``), checking it before DeepSpeed sees it (``checks``), and
filling its "auto" values from the job's options and data (``resolve``). Used by training, the planner and the
benchmarks alike."""
