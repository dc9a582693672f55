"""Build of the native extension `fastembed_tune._native`: setuptools drives CMakeLists.txt.

Same layout as pybind11's cmake_example: a `CMakeExtension` carries no sources, and `CMakeBuild`
runs `cmake` (configure) and `cmake --build` for it. Differences, all for incremental rebuilds:

* the CMake build directory persists across builds, `build/cmake-<python tag>-<platform>` in the
  project (setuptools hands editable builds a fresh temporary `build_temp` each time, which would
  recompile every source file); a second build recompiles only the changed files;
* CMake writes the library into its own build directory and it is then copied to where setuptools
  wants it: the package directory in the wheel, or `fastembed_tune/` in the source tree for
  `pip install -e .` and `build_ext --inplace`. An unchanged extension is not linked again.

Project metadata (name, version, dependencies, extras, scripts) lives in pyproject.toml.

Environment: CMAKE_ARGS (extra configure arguments, space separated), CMAKE_GENERATOR (default: Ninja
when the `ninja` package or a working `ninja` is found), CMAKE_BUILD_PARALLEL_LEVEL (default: the
`-j` of build_ext, else all CPUs).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, find_namespace_packages, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: str = "") -> None:
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath((HERE / sourcedir).resolve())


def _tool(module: str, attr: str, exe: str):
    """The executable `exe` from the pip package `module` if installed (the build environment's, which
    need not be on PATH with --no-build-isolation), else from PATH if it runs, else None."""
    try:
        mod = __import__(module)
        path = Path(getattr(mod, attr)) / exe
        if path.is_file():
            return str(path)
    except (ImportError, AttributeError):
        pass
    found = shutil.which(exe)
    if found:
        try:  # e.g. a pyenv shim on PATH for a tool the current interpreter does not have
            subprocess.run([found, "--version"], check=True, capture_output=True)
            return found
        except (OSError, subprocess.CalledProcessError):
            pass
    return None


def _cached_generator(build_dir: Path):
    cache = build_dir / "CMakeCache.txt"
    if not cache.is_file():
        return None
    for line in cache.read_text(errors="replace").splitlines():
        if line.startswith("CMAKE_GENERATOR:"):
            return line.split("=", 1)[1]
    return None


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)

        cmake = _tool("cmake", "CMAKE_BIN_DIR", "cmake")
        if cmake is None:
            raise RuntimeError("cmake not found: pip install cmake")
        import pybind11  # a build requirement (pyproject.toml)

        ext_fullpath = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = HERE / "build" / f"cmake-{sys.implementation.cache_tag}-{sysconfig.get_platform()}"
        lib_dir = build_dir / "lib"

        cmake_args = [
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={lib_dir}",
        ]
        generator = os.environ.get("CMAKE_GENERATOR", "")
        if not generator or generator == "Ninja":
            ninja = _tool("ninja", "BIN_DIR", "ninja")
            if ninja is not None:
                cmake_args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM:FILEPATH={ninja}"]
            elif generator:
                raise RuntimeError("CMAKE_GENERATOR=Ninja but ninja not found: pip install ninja")
        cmake_args += [a for a in os.environ.get("CMAKE_ARGS", "").split(" ") if a]

        # A build directory made with another generator cannot be reused: start it afresh.
        wanted = "Ninja" if "-GNinja" in cmake_args else generator
        cached = _cached_generator(build_dir)
        if cached is not None and (cached != wanted if wanted else cached == "Ninja"):
            shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True, exist_ok=True)

        # Re-configuring an existing build directory takes ~0.5 s and keeps its objects.
        subprocess.run([cmake, "-S", ext.sourcedir, "-B", str(build_dir), *cmake_args], check=True)

        build_args = ["--config", "Release", "--target", "_native"]
        if "CMAKE_BUILD_PARALLEL_LEVEL" not in os.environ:
            build_args += [f"-j{self.parallel or os.cpu_count() or 1}"]
        subprocess.run([cmake, "--build", str(build_dir), *build_args], check=True)

        built = lib_dir / ext_fullpath.name
        if not built.is_file():
            raise RuntimeError(f"cmake built no {built}")
        ext_fullpath.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(built), str(ext_fullpath))

    def copy_file(self, infile, outfile, *args, **kwargs):
        """Copy by rename (also for setuptools' copy into the source tree with --inplace / -e): a process
        that has the old library loaded keeps it intact, where a copy in place over it would crash it."""
        outfile = os.fspath(outfile)
        if os.path.isdir(outfile):
            outfile = os.path.join(outfile, os.path.basename(infile))
        head, name = os.path.split(outfile)
        tmp = os.path.join(head, f".{name}.{os.getpid()}.tmp.so")  # ignored by git and MANIFEST.in
        try:
            shutil.copy2(infile, tmp)
            os.replace(tmp, outfile)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return outfile, True


setup(
    # every sub-package, and the data-only folders (sample_data/, ...) as packages of their own
    packages=find_namespace_packages(include=["fastembed_tune", "fastembed_tune.*"], exclude=["*.__pycache__"]),
    include_package_data=True,  # the data files named by MANIFEST.in (sample_data/, guard_data/, ...)
    ext_modules=[CMakeExtension("fastembed_tune._native")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
