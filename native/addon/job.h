// job.h: the addon's asynchronous call. Values are copied out of JS on the main thread, run() computes
// on a libuv worker thread and never touches JS, and result() turns the outcome into JS values back on
// the main thread. Every job returns a Promise; engine errors reject with an Error whose `code` is the
// step::ErrorCode name (lib/errors.ts maps it to a class).
#pragma once
#include <napi.h>

#include <new>
#include <stdexcept>
#include <string>

#include "../core/errors.h"

namespace step::addon {

// An AsyncWorker that settles a Promise and carries the engine's error code to JS. Completion runs in
// the environment that queued the job; when that environment is being torn down (a Worker exiting,
// or terminated mid-call) nobody waits for the Promise and settling it fails: that is swallowed
// instead of escaping as a C++ exception (which would abort the process).
class Job : public Napi::AsyncWorker {
 public:
  explicit Job(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  virtual void run() = 0;                        // worker thread
  virtual Napi::Value result(Napi::Env env) = 0; // main thread
  void fail(ErrorCode code, const std::string& message) {
    code_ = code;
    message_ = message;
    failed_ = true;
  }

 private:
  void Execute() final {
    try {
      run();
    } catch (const Error& e) {
      fail(e.code(), e.what());
    } catch (const std::bad_alloc&) {
      fail(ErrorCode::kOutOfMemory, "out of memory while running the model: try a smaller input size or batch");
    } catch (const std::exception& e) {
      fail(ErrorCode::kInternal, std::string("internal error: ") + e.what());
    }
  }
  void reject(Napi::Env env, ErrorCode code, const std::string& message) {
    Napi::Error err = Napi::Error::New(env, message);
    err.Set("code", Napi::String::New(env, error_code_name(code)));
    deferred_.Reject(err.Value());
  }
  void settle(Napi::Env env) {
    if (failed_) return reject(env, code_, message_);
    try {
      deferred_.Resolve(result(env));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (const std::bad_alloc&) {
      reject(env, ErrorCode::kOutOfMemory, "out of memory while returning the results");
    } catch (const Error& e) {
      reject(env, e.code(), e.what());
    } catch (const std::exception& e) {
      reject(env, ErrorCode::kInternal, std::string("internal error: ") + e.what());
    }
  }
  void OnWorkComplete(Napi::Env env, napi_status status) final {
    if (status != napi_cancelled) {
      try {
        Napi::HandleScope scope(env);
        settle(env);
      } catch (...) {
        // the environment is shutting down: the Promise has no one to settle for
      }
    }
    Destroy();
  }

  Napi::Promise::Deferred deferred_;
  bool failed_ = false;
  ErrorCode code_ = ErrorCode::kInternal;
  std::string message_;
};

}  // namespace step::addon
