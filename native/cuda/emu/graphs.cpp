// graphs.cpp: the emulated runtime's stream capture, events and graphs (see runtime.cpp for the
// conventions: exec_mutex, last error, sticky fault). A capture records every operation enqueued on its
// stream as a Node; cudaStreamEndCapture turns them into a graph, cudaGraphInstantiate copies them, and
// cudaGraphLaunch runs them in order. Events are host times, complete once recorded.
#include <cuda_runtime.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "runtime_state.h"

namespace step_emu::runtime_detail {
namespace {

Capture* find_capture(uint64_t id) {
  for (auto& [p, s] : st().streams)
    if (s->capture && s->capture->id == id) return s->capture.get();
  return nullptr;
}

cudaError_t event_of(cudaEvent_t e, const char* api) {
  if (e && st().events.count(e)) return cudaSuccess;
  return fail(cudaErrorInvalidResourceHandle, std::string(api) + ": unknown event");
}

// Querying or waiting on an event last recorded in a capture: cudaErrorCapturedEvent (driver_types.h: "not
// permitted on an event which was last recorded in a capturing stream"), in every capture mode (the doc of
// cudaThreadExchangeStreamCaptureMode); invalidates that capture if still open.
cudaError_t captured_event(CUevent_st* e, const char* api) {
  if (e->state != EmuEventState::captured) return cudaSuccess;
  if (Capture* c = find_capture(e->capture_id)) invalidate(*c);
  return fail(cudaErrorCapturedEvent, std::string(api) + ": the event was last recorded in a stream capture");
}

cudaError_t wait_event(cudaEvent_t event, const char* api) {  // cudaEventQuery, cudaEventSynchronize
  if (cudaError_t e = sticky()) return e;
  if (cudaError_t e = event_of(event, api)) return e;
  return captured_event(event, api);  // otherwise complete: work runs synchronously
}

}  // namespace
}  // namespace step_emu::runtime_detail

using namespace step_emu;
using namespace step_emu::runtime_detail;

extern "C" {

// -- stream capture --

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  STEP_EMU_ENTER;
  CUstream_st* s = nullptr;
  if (!resolve(stream, &s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamBeginCapture: unknown stream");
  if (!s) return fail(cudaErrorStreamCaptureUnsupported, "cudaStreamBeginCapture: the legacy stream cannot capture");
  if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
      mode != cudaStreamCaptureModeRelaxed)
    return fail(cudaErrorInvalidValue, "cudaStreamBeginCapture: unknown mode");
  if (s->capture) return fail(cudaErrorIllegalState, "cudaStreamBeginCapture: the stream is already capturing");
  s->capture = std::make_unique<Capture>();
  s->capture->id = st().next_capture_id++, s->capture->mode = mode, s->capture->thread = std::this_thread::get_id();
  return cudaSuccess;
}

// After a fault the capture ends too (no graph), so that the stream is usable after reset_after_fault().
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* pGraph) {
  STEP_EMU_LOCK;
  CUstream_st* s = nullptr;
  if (!pGraph) return fail(cudaErrorInvalidValue, "cudaStreamEndCapture: pGraph is null");
  *pGraph = nullptr;
  if (!resolve(stream, &s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamEndCapture: unknown stream");
  if (!s || !s->capture) return fail(cudaErrorIllegalState, "cudaStreamEndCapture: the stream is not capturing");
  if (s->capture->mode != cudaStreamCaptureModeRelaxed && s->capture->thread != std::this_thread::get_id())
    return fail(cudaErrorStreamCaptureWrongThread, "cudaStreamEndCapture from another thread than the capture's");
  std::unique_ptr<Capture> c = std::move(s->capture);
  STEP_EMU_STICKY;
  if (c->invalidated)
    return fail(cudaErrorStreamCaptureInvalidated, "cudaStreamEndCapture: an error invalidated the capture");
  auto g = std::make_unique<CUgraph_st>();
  g->nodes = std::move(c->nodes);
  *pGraph = g.get();
  st().graphs.emplace(g.get(), std::move(g));
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* pCaptureStatus) {
  STEP_EMU_ENTER;
  CUstream_st* s = nullptr;
  if (!pCaptureStatus) return fail(cudaErrorInvalidValue, "cudaStreamIsCapturing: null pointer");
  if (!resolve(stream, &s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamIsCapturing: unknown stream");
  *pCaptureStatus = cudaStreamCaptureStatusNone;
  if (!s && blocking_capture_active())  // as its doc says; that capture is not invalidated
    return fail(cudaErrorStreamCaptureImplicit, "cudaStreamIsCapturing on the legacy stream");
  if (s && s->capture)
    *pCaptureStatus = s->capture->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

// -- events --

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  STEP_EMU_ENTER;
  const unsigned known = cudaEventBlockingSync | cudaEventDisableTiming | cudaEventInterprocess;
  if (!event || (flags & ~known) || ((flags & cudaEventInterprocess) && !(flags & cudaEventDisableTiming)))
    return fail(cudaErrorInvalidValue, "cudaEventCreateWithFlags: null pointer or invalid flags");
  auto e = std::make_shared<CUevent_st>();
  e->flags = flags;
  *event = e.get();
  st().events.emplace(e.get(), std::move(e));
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  STEP_EMU_LOCK;
  auto it = event ? st().events.find(event) : st().events.end();
  if (it == st().events.end()) return fail(cudaErrorInvalidResourceHandle, "cudaEventDestroy: unknown event");
  it->second->destroyed = true;
  st().events.erase(it);
  return sticky();
}

// In a capture the record becomes a node that sets the event's time when the graph runs. (On a GPU a plain
// cudaEventRecord in a capture only marks a point for cross-stream joins; cudaEventRecordExternal makes a node.)
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  STEP_EMU_ENTER;
  CUstream_st* s = nullptr;
  if (cudaError_t e = event_of(event, "cudaEventRecord")) return e;
  if (cudaError_t e = stream_op(stream, "cudaEventRecord", &s)) return e;
  Node n;
  n.kind = NodeKind::event, n.event = st().events.at(event);
  if (s && s->capture) event->state = EmuEventState::captured, event->capture_id = s->capture->id;
  return submit(s, std::move(n));
}

cudaError_t cudaEventQuery(cudaEvent_t event) { STEP_EMU_LOCK; return wait_event(event, "cudaEventQuery"); }
cudaError_t cudaEventSynchronize(cudaEvent_t event) { STEP_EMU_LOCK; return wait_event(event, "cudaEventSynchronize"); }

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  STEP_EMU_ENTER;
  const char* api = "cudaEventElapsedTime";
  if (!ms) return fail(cudaErrorInvalidValue, "cudaEventElapsedTime: ms is null");
  for (cudaEvent_t e : {start, end}) {
    if (cudaError_t err = event_of(e, api)) return err;
    if (cudaError_t err = captured_event(e, api)) return err;
  }
  if (start->state == EmuEventState::never || end->state == EmuEventState::never)  // as its doc says
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event was never recorded");
  if ((start->flags | end->flags) & cudaEventDisableTiming)
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event has cudaEventDisableTiming");
  *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
  return cudaSuccess;
}

// -- graphs --

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* pGraphExec, cudaGraph_t graph, unsigned long long flags) {
  STEP_EMU_ENTER;
  (void)flags;  // auto-free on launch, upload, device launch, priority: nothing to do here
  if (!pGraphExec || !graph) return fail(cudaErrorInvalidValue, "cudaGraphInstantiate: null graph or pointer");
  auto it = st().graphs.find(graph);
  if (it == st().graphs.end()) return fail(cudaErrorInvalidResourceHandle, "cudaGraphInstantiate: unknown graph");
  auto x = std::make_unique<CUgraphExec_st>();
  x->nodes = it->second->nodes;
  *pGraphExec = x.get();
  st().execs.emplace(x.get(), std::move(x));
  return cudaSuccess;
}

// A graph launched into a capturing stream is rejected with cudaErrorStreamCaptureUnsupported (so measured
// on an H200, CUDA 12.6: microsoft/onnxruntime PR #32081), invalidating the capture.
cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream) {
  STEP_EMU_ENTER;
  CUstream_st* s = nullptr;
  if (cudaError_t e = stream_op(stream, "cudaGraphLaunch", &s)) return e;
  auto it = graphExec ? st().execs.find(graphExec) : st().execs.end();
  if (it == st().execs.end()) return fail_on(s, cudaErrorInvalidValue, "cudaGraphLaunch: unknown graph exec");
  if (s && s->capture) return fail_on(s, cudaErrorStreamCaptureUnsupported, "cudaGraphLaunch into a capturing stream");
  for (const Node& n : it->second->nodes)
    if (cudaError_t e = run_node(n)) return e;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  STEP_EMU_LOCK;
  if (!graph || !st().graphs.erase(graph))
    return fail(cudaErrorInvalidResourceHandle, "cudaGraphDestroy: unknown graph");
  return sticky();
}

// An unsafe call during a capture, as measured in the same onnxruntime PR (cudaErrorStreamCaptureUnsupported).
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t graphExec) {
  STEP_EMU_LOCK;
  if (cudaError_t e = unsafe_call("cudaGraphExecDestroy")) return e;
  if (!graphExec || !st().execs.erase(graphExec))
    return fail(cudaErrorInvalidResourceHandle, "cudaGraphExecDestroy: unknown graph exec");
  return sticky();
}

}  // extern "C"
