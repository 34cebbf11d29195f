#pragma once

namespace mxvoip::call {

// The state of a call's ICE transport, as the media layer reports it (mxvoip::media uses this
// type too, so the driver hands it on unchanged).
enum class IceState { checking, connected, disconnected, failed };

}  // namespace mxvoip::call
