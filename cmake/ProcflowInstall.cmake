# Installs procflow::procflow and procflow::stages with a package config, so that
# find_package(procflow) works for consumers (tests/consumer proves it), and procflow::mpi where
# it was built: find_package(procflow COMPONENTS mpi). The component has an export set of its
# own, so that a consumer of the core package never needs MPI.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS procflow procflow_stages EXPORT procflowTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/procflow DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/stages/include/procflow DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

set(_config_dir ${CMAKE_INSTALL_LIBDIR}/cmake/procflow)
install(EXPORT procflowTargets NAMESPACE procflow:: DESTINATION ${_config_dir})
if(TARGET procflow_mpi)
  install(TARGETS procflow_mpi EXPORT procflowMpiTargets
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(EXPORT procflowMpiTargets NAMESPACE procflow:: DESTINATION ${_config_dir})
endif()
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/procflowConfig.cmake.in
  ${PROJECT_BINARY_DIR}/procflowConfig.cmake INSTALL_DESTINATION ${_config_dir})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/procflowConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/procflowConfig.cmake ${PROJECT_BINARY_DIR}/procflowConfigVersion.cmake
  DESTINATION ${_config_dir})
