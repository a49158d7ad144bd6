"""Training: the shared loop (`lib`), per-stage model builders (`stages`) and work-directory I/O."""
