"""Install mrcnn: Mask R-CNN and Cascade Mask R-CNN for TensorFlow 2 / Keras 3."""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_requirements(name):
    with open(os.path.join(HERE, name)) as f:
        return [line.strip() for line in f
                if line.strip() and not line.startswith(("#", "-r"))]


setup(
    name="mrcnn",
    version="0.1.0",
    description="Mask R-CNN and Cascade Mask R-CNN for TensorFlow 2.21 / Keras 3",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mrcnn", "mrcnn.*"]),
    python_requires=">=3.10",
    install_requires=read_requirements("requirements.txt"),
    extras_require={"export": read_requirements("requirements-export.txt"),
                    "dev": read_requirements("requirements-dev.txt")
                    + read_requirements("requirements-export.txt")},
    license="MIT",
)
