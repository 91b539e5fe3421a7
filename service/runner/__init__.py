"""The runner: claims queued jobs with a lease (loop), runs each in a training child process
(child), and turns the child's JSON lines into events, checkpoints and the job's final status."""
