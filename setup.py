"""Install mrcnn: ``pip install -e .`` (library) or ``pip install -e ".[dev]"`` (tests too)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
REQUIREMENTS = [
    line.strip() for line in (HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="mrcnn",
    version="0.1.0",
    description="Mask R-CNN instance segmentation for Keras 3 (TensorFlow and JAX), "
                "in the Matterport tradition",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mrcnn", "mrcnn.*"]),
    python_requires=">=3.11",
    install_requires=REQUIREMENTS,
    extras_require={
        # jax: the second backend the tests exercise; nbclient & co execute the notebooks.
        "dev": ["pytest>=8", "hypothesis>=6", "jax[cpu]>=0.4.30", "nbclient>=0.10",
                "nbformat>=5.10", "ipykernel>=6.29"],
    },
    license="MIT",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
