# duet_add_layer(<name> DEPS <targets...>): one static library per folder, made of every .cpp in
# it, with the source root as include directory (#include "engine/model.hpp").
# A folder with no sources yet becomes an interface library, so the tree always configures.
function(duet_add_layer name)
  cmake_parse_arguments(arg "" "" "DEPS" ${ARGN})
  file(GLOB srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cpp)
  if(srcs)
    add_library(${name} STATIC ${srcs})
    target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
    target_link_libraries(${name} PUBLIC ${arg_DEPS})
  else()
    add_library(${name} INTERFACE)
    target_include_directories(${name} INTERFACE ${PROJECT_SOURCE_DIR})
    target_link_libraries(${name} INTERFACE ${arg_DEPS})
  endif()
endfunction()
