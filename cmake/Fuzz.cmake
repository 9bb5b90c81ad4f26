# cmake/Fuzz.cmake: libFuzzer targets for every file parser (tests/fuzz/fuzz_*.c; docs/fuzzing.md).
# Off by default. Needs clang (Debian: clang-15 with libclang-common-15-dev, which ships the
# libFuzzer runtime): cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang-15 -DGPUSEG_BUILD_FUZZ=ON
# (-Wno-unknown-warning-option: clang lacks gcc's -Wno-format-truncation in GPUSEG_WARNINGS.)
# The library sources are compiled again into their own object library with coverage
# instrumentation and ASan/UBSan; each target links them with libFuzzer's main().
option(GPUSEG_BUILD_FUZZ "Build the libFuzzer targets (needs clang)" OFF)
if(NOT GPUSEG_BUILD_FUZZ)
  return()
endif()
if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "GPUSEG_BUILD_FUZZ needs clang (libFuzzer); configure with -DCMAKE_C_COMPILER=clang-15")
endif()

# The library is warning-clean under gcc; clang finds other things (e.g. -Wformat-nonliteral on
# the error formatter's vsnprintf), so its objects here do not turn warnings into errors.
set(GPUSEG_FUZZ_LIB_WARNINGS ${GPUSEG_WARNINGS})
list(REMOVE_ITEM GPUSEG_FUZZ_LIB_WARNINGS -Werror)
set(GPUSEG_FUZZ_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined
    -fno-omit-frame-pointer -g)
add_library(gpuseg_fuzz_objects OBJECT ${GPUSEG_LIB_SOURCES} ${GPUSEG_KERNELS_C})
target_compile_definitions(gpuseg_fuzz_objects PRIVATE GPUSEG_BUILDING_LIBRARY
                           _POSIX_C_SOURCE=200809L ${GPUSEG_CL_DEFINES})
target_compile_options(gpuseg_fuzz_objects PRIVATE -Wno-unknown-warning-option ${GPUSEG_FUZZ_LIB_WARNINGS} ${GPUSEG_FUZZ_FLAGS}
                       -fsanitize=fuzzer-no-link)
target_include_directories(gpuseg_fuzz_objects PRIVATE ${PROJECT_SOURCE_DIR}/include
  ${PROJECT_SOURCE_DIR}/src ${PROJECT_BINARY_DIR}/generated ${GPUSEG_DEP_INCLUDE_DIRS})

file(GLOB GPUSEG_FUZZ_TARGETS CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_*.c)
foreach(src ${GPUSEG_FUZZ_TARGETS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src} $<TARGET_OBJECTS:gpuseg_fuzz_objects>)
  target_compile_definitions(${name} PRIVATE _POSIX_C_SOURCE=200809L ${GPUSEG_CL_DEFINES})
  target_compile_options(${name} PRIVATE -Wno-unknown-warning-option ${GPUSEG_WARNINGS} ${GPUSEG_FUZZ_FLAGS} -fsanitize=fuzzer)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR}/src
                             ${PROJECT_BINARY_DIR}/generated ${GPUSEG_DEP_INCLUDE_DIRS})
  target_link_libraries(${name} PRIVATE ${GPUSEG_DEP_LIBRARIES})
  target_link_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
endforeach()
