# `cmake --install` (and the wheel, under site-packages/ember/) ship libengine, its public
# headers and a CMake package config, so a C++ application can find_package(engine).
include(CMakePackageConfigHelpers)

# The installed libengine must still find what it was linked against outside the system
# directories (the CUDA build's libcudart/libcublas in a toolkit or wheel folder).
set_target_properties(engine PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
# A wheel cannot hold symlinks, so libengine.so -> .so.0 -> .so.0.1.0 would ship as three full
# copies. Inside the Python package libengine is private to ember, so it goes unversioned there.
if(SKBUILD)
  # (set_property without a value unsets; an empty VERSION would name it "libengine.so.")
  set_property(TARGET engine PROPERTY VERSION)
  set_property(TARGET engine PROPERTY SOVERSION)
endif()

install(TARGETS engine EXPORT engineTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/cpp/include/engine DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT engineTargets NAMESPACE engine:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/engine)

configure_package_config_file(${PROJECT_SOURCE_DIR}/cpp/cmake/engineConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/engineConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/engine)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/engineConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/engineConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/engineConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/engine)
