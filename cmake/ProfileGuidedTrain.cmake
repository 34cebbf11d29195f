# cmake -DTRAINER=<program> -DPROFILES=<dir> -P ProfileGuidedTrain.cmake
# Runs the instrumented trainer once, from no profiles. A failing training run still profiles
# the code it ran, and the tests report the failure; one that crashed leaves no profile, and the
# libraries are then built without one.
file(REMOVE_RECURSE "${PROFILES}")
# The simulation's own settings (one seed, more scenarios) are for people replaying it.
execute_process(COMMAND "${CMAKE_COMMAND}" -E env --unset=MXVOIP_SIM_SEED
                        --unset=MXVOIP_SIM_SCENARIOS "${TRAINER}" --gtest_brief=1
                OUTPUT_FILE "${PROFILES}.log"
                ERROR_FILE "${PROFILES}.log" RESULT_VARIABLE status)
if(NOT status EQUAL 0)
  message(WARNING "the training run failed (${status}), see ${PROFILES}.log; its profile is used as it is")
endif()
file(GLOB_RECURSE profiles "${PROFILES}/*.gcda")
if(NOT profiles)
  message(WARNING "the training run left no profile in ${PROFILES} (see ${PROFILES}.log): the "
                  "libraries are built without one")
endif()
