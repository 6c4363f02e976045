# PROCFLOW_FUZZ=ON: libFuzzer targets (tests/fuzz), clang only. Every target of the build tree is
# compiled with coverage instrumentation (-fsanitize=fuzzer-no-link) and ASan+UBSan (unless
# PROCFLOW_SANITIZE says otherwise), so the fuzzers see and check the library code they drive.
if(PROCFLOW_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "PROCFLOW_FUZZ needs clang (libFuzzer), got ${CMAKE_CXX_COMPILER_ID}: "
                        "use the 'fuzz' preset or -DCMAKE_CXX_COMPILER=clang++-14")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link)
  message(STATUS "procflow: building libFuzzer targets")
endif()
