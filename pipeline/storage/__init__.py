"""Storage every stage may use: atomic publishing on any file system
(`atomic`), TF Serving's version directories (`saved_models`) and the run
directory's lock and resume check (`run_dir`)."""
