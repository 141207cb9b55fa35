"""RLinf (SPMD edition): distributed RL post-training without Ray.

Install torch first (`pip install torch==2.13.0` on CPU machines, or your cluster's CUDA build),
then `pip install -e ".[embodied]"`, `".[reason]"` or `".[test]"`.
"""

from pathlib import Path

from setuptools import find_packages, setup

EMBODIED = ["gymnasium[mujoco]>=1.0"]
REASON = [
    "transformers>=4.51",
    "tokenizers>=0.20",
    "safetensors>=0.4",
    "math-verify>=0.7",
    "pyarrow>=14",
    "peft>=0.13",
]
EXTRAS = {
    "embodied": EMBODIED,
    "reason": REASON,
    "mpi": ["mpi4py>=3.1"],
    "maniskill": [*EMBODIED, "mani_skill>=3.0.0b20"],
    "libero": [*EMBODIED, "mujoco>=3.3,<3.4", "robosuite==1.4.1", "libero"],
    "vllm": ["vllm>=0.8"],
    "sglang": ["sglang[all]>=0.4"],
    "megatron": ["megatron-core>=0.12"],
    "bench": ["stable-baselines3>=2.3", "trl>=0.17"],
    "docs": ["sphinx>=7"],
}
EXTRAS["test"] = sorted(
    {
        *EMBODIED,
        *REASON,
        "pytest>=8",
        "pytest-timeout>=2.3",
        "ruff>=0.6",
        "mpi4py>=3.1",
        "psutil>=5.9",
    }
)
EXTRAS["all"] = sorted({*EMBODIED, *REASON, *EXTRAS["test"], *EXTRAS["bench"]})

setup(
    name="rlinf",
    version="0.1.0",
    description="Distributed RL post-training for embodied and reasoning policies, as one SPMD program",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rlinf", "rlinf.*"]),
    install_requires=[
        "torch>=2.6",
        "omegaconf>=2.3",
        "pyyaml>=6",
        "numpy>=1.24",
        "tensorboard>=2.14",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["rlinf-launch=rlinf.launch:main"]},
)
