# Profile-guided optimisation of the call protocol libraries (libs/proto, libs/call) in
# optimised GCC builds. Instrumented copies of the two libraries run the call simulation
# (libs/call/tests/simulation_test.cpp: 10,000 random scenarios, half of their events read as
# JSON text), and the libraries are then compiled with that profile. The training run is the
# simulation, not bench/: the profile is of the protocol's behaviour, not of the benchmark's
# recorded stream. bench/RESULTS.md (call protocol, session 6) has the measurements.
#
# On by default in Release and RelWithDebInfo builds with GCC and the tests (the trainer is one);
# -DMXVOIP_PGO=OFF builds without it.
#
#   mxvoip_pgo_training_copy(mxvoip_proto LINK Boost::json)          (libs/proto)
#   mxvoip_pgo_training_copy(mxvoip_call LINK mxvoip_proto_train)    (libs/call)
#   mxvoip_pgo_train_and_use(TRAINER tests/simulation_test.cpp LIBRARY mxvoip_call ALSO mxvoip_proto)

set(_mxvoip_pgo_default OFF)
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_BUILD_TYPE MATCHES "^(Release|RelWithDebInfo)$"
   AND NOT MXVOIP_SANITIZE AND MXVOIP_BUILD_TESTS)
  set(_mxvoip_pgo_default ON)
endif()
option(MXVOIP_PGO "Compile libs/proto and libs/call with a profile of the call simulation"
       ${_mxvoip_pgo_default})

set(MXVOIP_PGO_PROFILES ${CMAKE_BINARY_DIR}/pgo/profiles)  # the last training run's
set(MXVOIP_PGO_AUX ${CMAKE_BINARY_DIR}/pgo/aux)  # the compiles' common auxiliary names

# An instrumented copy of `lib`, `<lib>_train`, linking LINK instead of what `lib` links (the
# other libraries' copies): same sources, same flags, built only for the training run.
function(mxvoip_pgo_training_copy lib)
  if(NOT MXVOIP_PGO)
    return()
  endif()
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "" "LINK")
  get_target_property(sources ${lib} SOURCES)
  add_library(${lib}_train STATIC EXCLUDE_FROM_ALL ${sources})
  # GCC names a profile, and the ids of the functions local to a file, after the compile's
  # auxiliary output name, by default the object's path: both compiles of a source get the
  # same one (a source property, so the copy and the library share it), and so the same
  # profile.
  foreach(source ${sources})
    string(MAKE_C_IDENTIFIER "${lib}/${source}" base)
    set_property(SOURCE ${source} APPEND PROPERTY COMPILE_OPTIONS
                 -dumpdir ${MXVOIP_PGO_AUX}/ -dumpbase ${base})
  endforeach()
  foreach(property INCLUDE_DIRECTORIES INTERFACE_INCLUDE_DIRECTORIES)
    get_target_property(value ${lib} ${property})
    set_property(TARGET ${lib}_train PROPERTY ${property} ${value})
  endforeach()
  target_link_libraries(${lib}_train PUBLIC ${arg_LINK} PRIVATE mxvoip_warnings mxvoip_hot)
  target_compile_options(${lib}_train PRIVATE -fprofile-generate -fprofile-update=single
                                              -fprofile-dir=${MXVOIP_PGO_PROFILES})
endfunction()

# Links TRAINER (a GoogleTest source) against the copy of LIBRARY, runs it once, and compiles
# LIBRARY and the libraries in ALSO with the profile it leaves.
function(mxvoip_pgo_train_and_use)
  if(NOT MXVOIP_PGO)
    return()
  endif()
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "TRAINER;LIBRARY" "ALSO")
  add_executable(mxvoip_pgo_trainer EXCLUDE_FROM_ALL ${arg_TRAINER})
  target_link_libraries(mxvoip_pgo_trainer PRIVATE ${arg_LIBRARY}_train GTest::gtest_main
                                                   mxvoip_warnings)
  target_link_options(mxvoip_pgo_trainer PRIVATE -fprofile-generate)

  set(stamp ${CMAKE_BINARY_DIR}/pgo/trained.stamp)
  add_custom_command(
    OUTPUT ${stamp}
    COMMAND ${CMAKE_COMMAND} -DTRAINER=$<TARGET_FILE:mxvoip_pgo_trainer>
            -DPROFILES=${MXVOIP_PGO_PROFILES}
            -P ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/ProfileGuidedTrain.cmake
    COMMAND ${CMAKE_COMMAND} -E touch ${stamp}
    DEPENDS mxvoip_pgo_trainer ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/ProfileGuidedTrain.cmake
    COMMENT "Training run for profile-guided optimisation: the call simulation"
    VERBATIM)
  add_custom_target(mxvoip_pgo_profile DEPENDS ${stamp})

  # The libraries compile after the training run. An object is recompiled when its source
  # changes, not when only the profile does (a source property would reach the instrumented
  # copy too, which shares the sources): an incremental build may keep an object laid out by an
  # older profile, which is slower at worst, never wrong. A fresh build is always current.
  foreach(lib ${arg_LIBRARY} ${arg_ALSO})
    add_dependencies(${lib} mxvoip_pgo_profile)
    # A source the training run never reaches has no profile (base64.cpp): not a warning.
    target_compile_options(${lib} PRIVATE -fprofile-use -fprofile-dir=${MXVOIP_PGO_PROFILES}
                                          -Wno-missing-profile)
  endforeach()
endfunction()
