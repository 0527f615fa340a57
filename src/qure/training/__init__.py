"""QuRe's training engine: data assembly, negative sampling, schedule and the trainer."""
