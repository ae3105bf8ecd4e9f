// guarded.h: runs a native call body, turning engine errors into JS Errors with the engine's `code`
// (Napi errors pass as they are; any other exception is ERR_STEP_INTERNAL). Shared by the test-only
// bindings (ops_binding.cpp, cuda_binding.cpp, emu_binding.cpp).
#pragma once
#include <napi.h>

#include <exception>
#include <string>

#include "../core/errors.h"

namespace step::addon {

template <typename Body>
Napi::Value guarded(Napi::Env env, Body body) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const step::Error& e) {
    Napi::Error err = Napi::Error::New(env, e.what());
    err.Set("code", Napi::String::New(env, step::error_code_name(e.code())));
    throw err;
  } catch (const std::exception& e) {
    Napi::Error err = Napi::Error::New(env, std::string("internal error: ") + e.what());
    err.Set("code", Napi::String::New(env, step::error_code_name(step::ErrorCode::kInternal)));
    throw err;
  }
}

}  // namespace step::addon
