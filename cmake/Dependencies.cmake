# Finds the Debian-packaged dependencies (tools/setup.sh installs them) and fails with the
# package name to install when one is missing. Private dependencies are linked by plain library
# name so that the exported static target and the pkg-config file stay relocatable.
find_package(PkgConfig REQUIRED)

function(gpuseg_require_header header package)
  find_path(_dir NAMES ${header} PATH_SUFFIXES stb)
  if(NOT _dir)
    message(FATAL_ERROR "gpuseg: ${header} not found; install the Debian package ${package} (tools/setup.sh does)")
  endif()
  list(APPEND GPUSEG_DEP_INCLUDE_DIRS ${_dir})
  set(GPUSEG_DEP_INCLUDE_DIRS ${GPUSEG_DEP_INCLUDE_DIRS} PARENT_SCOPE)
  unset(_dir CACHE)
endfunction()

function(gpuseg_require_lib lib package)
  find_library(_lib NAMES ${lib})
  if(NOT _lib)
    message(FATAL_ERROR "gpuseg: library ${lib} not found; install the Debian package ${package} (tools/setup.sh does)")
  endif()
  unset(_lib CACHE)
endfunction()

set(GPUSEG_DEP_INCLUDE_DIRS "")
gpuseg_require_header(CL/cl.h opencl-headers)
gpuseg_require_lib(OpenCL ocl-icd-opencl-dev)
gpuseg_require_header(clblast_c.h libclblast-dev)
gpuseg_require_lib(clblast libclblast-dev)
gpuseg_require_header(stb_image.h libstb-dev)
gpuseg_require_lib(stb libstb-dev)
gpuseg_require_header(tiffio.h libtiff-dev)
gpuseg_require_lib(tiff libtiff-dev)
gpuseg_require_header(jansson.h libjansson-dev)
gpuseg_require_lib(jansson libjansson-dev)
gpuseg_require_header(nettle/sha2.h nettle-dev)
gpuseg_require_lib(nettle nettle-dev)
gpuseg_require_header(zlib.h zlib1g-dev)
gpuseg_require_lib(z zlib1g-dev)
list(REMOVE_DUPLICATES GPUSEG_DEP_INCLUDE_DIRS)

set(GPUSEG_DEP_LIBRARIES OpenCL clblast tiff jansson nettle z stb m pthread rt)
# One OpenCL API level everywhere: 1.2 runs on every vendor's driver and on PoCL.
set(GPUSEG_CL_DEFINES CL_TARGET_OPENCL_VERSION=120 CL_USE_DEPRECATED_OPENCL_1_2_APIS)

if(GPUSEG_BUILD_TESTS)
  pkg_check_modules(CHECK REQUIRED IMPORTED_TARGET check)
endif()
