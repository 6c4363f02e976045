# Warnings live on an INTERFACE target that procflow's own targets link privately; nothing is
# added to global flags, so projects that add_subdirectory(procflow) keep their own settings.
add_library(procflow_warnings INTERFACE)
target_compile_options(procflow_warnings INTERFACE
  $<$<CXX_COMPILER_ID:GNU,Clang>:-Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion
    -Wnon-virtual-dtor -Wold-style-cast -Wcast-align -Wnull-dereference -Wdouble-promotion
    -Wimplicit-fallthrough>)
