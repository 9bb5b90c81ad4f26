# Install rules: libraries, public headers, the gpuseg command, an exported CMake package
# (find_package(gpuseg) -> gpuseg::gpuseg, gpuseg::gpuseg_static) and a pkg-config file.
include(CMakePackageConfigHelpers)
install(TARGETS gpuseg gpuseg_static EXPORT gpusegTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS gpuseg_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES models/${GPUSEG_DEFAULT_MODEL} DESTINATION ${CMAKE_INSTALL_DATADIR}/gpuseg/models)
install(DIRECTORY include/gpuseg DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT gpusegTargets NAMESPACE gpuseg:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/gpuseg)
configure_package_config_file(cmake/gpusegConfig.cmake.in
  ${PROJECT_BINARY_DIR}/gpusegConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/gpuseg)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/gpusegConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/gpusegConfig.cmake ${PROJECT_BINARY_DIR}/gpusegConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/gpuseg)
string(REPLACE ";" " -l" GPUSEG_PC_LIBS_PRIVATE "-l${GPUSEG_DEP_LIBRARIES}")
# The .pc file finds its prefix from its own location, so `cmake --install --prefix X` works
# whatever CMAKE_INSTALL_PREFIX was at configure time ("lib/pkgconfig" -> "../..").
string(REGEX REPLACE "[^/]+" ".." GPUSEG_PC_UP "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
configure_file(cmake/gpuseg.pc.in ${PROJECT_BINARY_DIR}/gpuseg.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/gpuseg.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
