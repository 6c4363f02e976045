# PROCFLOW_SANITIZE=address,undefined | thread : applied to every target of this build tree.
if(PROCFLOW_SANITIZE)
  string(REPLACE "," ";" _procflow_sanitizers "${PROCFLOW_SANITIZE}")
  # -g1: line tables, enough for a sanitizer's report (function, file:line, inlined frames too).
  # Under ASan+UBSan a test file compiles ~38 % faster than with -g (full debug info of every
  # template instance), the whole build ~10 % (its time is mostly code generation). Added after
  # the build type's flags, so it wins over a -g there.
  set(_flags "-fsanitize=${PROCFLOW_SANITIZE}" -fno-omit-frame-pointer -g1)
  if("undefined" IN_LIST _procflow_sanitizers)
    list(APPEND _flags -fno-sanitize-recover=undefined)
  endif()
  add_compile_options(${_flags})
  add_link_options("-fsanitize=${PROCFLOW_SANITIZE}")
  add_compile_definitions(PROCFLOW_SANITIZED=1)
  message(STATUS "procflow: building with -fsanitize=${PROCFLOW_SANITIZE}")
endif()
