# PROCFLOW_SANITIZE=address,undefined | thread : applied to every target of this build tree.
if(PROCFLOW_SANITIZE)
  string(REPLACE "," ";" _procflow_sanitizers "${PROCFLOW_SANITIZE}")
  # -g1: line tables, enough for a sanitizer's report (function, file:line, inlined frames too)
  # and a third less compile time than -g under ASan+UBSan (its full debug info of every
  # template instance; after any -g of the build type, so this one holds).
  set(_flags "-fsanitize=${PROCFLOW_SANITIZE}" -fno-omit-frame-pointer -g1)
  if("undefined" IN_LIST _procflow_sanitizers)
    list(APPEND _flags -fno-sanitize-recover=undefined)
  endif()
  add_compile_options(${_flags})
  add_link_options("-fsanitize=${PROCFLOW_SANITIZE}")
  add_compile_definitions(PROCFLOW_SANITIZED=1)
  message(STATUS "procflow: building with -fsanitize=${PROCFLOW_SANITIZE}")
endif()
