// Boost.JSON compiled into the fuzz targets, so that the parser's branches guide the fuzzer
// too (Debian's shared library is not instrumented).
#include <boost/json/src.hpp>
