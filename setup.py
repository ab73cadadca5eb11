from pathlib import Path

from setuptools import find_packages, setup

README = Path(__file__).with_name("README.md")

setup(
    name="fairseq-srupp",
    version="0.1.0",
    description="SRU++ (Lei 2021, 'When Attention Meets Fast Recurrence') as a fairseq plugin",
    long_description=README.read_text() if README.exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["fairseq_srupp", "fairseq_srupp.*"]),
    package_data={
        "fairseq_srupp": ["ops/recurrence/*.cpp", "ops/recurrence/*.cu", "ops/recurrence/*.h", "ops/dropout/*.cpp", "bench/*.h"]
    },
    include_package_data=True,
    install_requires=[
        "torch>=2.0",
        "numpy",
        # Official fairseq 0.12.2 does not import on Python >= 3.11; fairseq-fixed ships the same
        # `fairseq` package with the fixes. Both need `--no-build-isolation` (see Makefile).
        "fairseq>=0.12.2; python_version < '3.11'",
        "fairseq-fixed==0.12.3.1; python_version >= '3.11'",
        "hydra-core>=1.0.7",
        "omegaconf",
        "sacremoses",
        # The fast CPU recurrence is compiled on first use with torch.utils.cpp_extension.
        "ninja",
        # fairseq's --tensorboard-logdir writes nothing (one warning) without a TensorBoard writer;
        # tensorboardX is the light one (numpy + protobuf), torch.utils.tensorboard needs all of tensorboard.
        "tensorboardX",
    ],
    extras_require={
        "cuda12": ["cupy-cuda12x"],
        "cuda13": ["cupy-cuda13x"],
        "plot": ["matplotlib"],
        "test": ["pytest", "pytest-xdist", "sru==3.0.0.dev6", "matplotlib"],
        # Compiles the CUDA kernel source with NVRTC on machines without a GPU (tests only). Kept out
        # of "test" so a GPU machine with cupy-cuda13x does not get a second CuPy.
        "compile-check": ["cupy-cuda12x", "nvidia-cuda-nvrtc-cu12"],
    },
    entry_points={
        "console_scripts": [
            "srupp-convert=fairseq_srupp.convert.__main__:main",
            "srupp-sample=fairseq_srupp.sample_cli:main",
        ],
    },
)
