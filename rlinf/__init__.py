"""RLinf (SPMD edition): distributed RL post-training without Ray."""

__version__ = "0.1.0"
