{
  "targets": [
    {
      "target_name": "step_seg",
      "sources": [
        "native/core/model.cpp",
        "native/core/file_map.cpp",
        "native/core/merge.cpp",
        "native/core/effnet.cpp",
        "native/core/cost.cpp",
        "native/core/layout.cpp",
        "native/core/weights.cpp",
        "native/core/segment.cpp",
        "native/core/features.cpp",
        "native/core/device_none.cpp",
        "native/cpu/parallel.cpp",
        "native/cpu/gemm.cpp",
        "native/cpu/gemm_bf16.cpp",
        "native/cpu/conv.cpp",
        "native/cpu/norm.cpp",
        "native/cpu/attention.cpp",
        "native/cpu/token_merge.cpp",
        "native/cpu/token_compact.cpp",
        "native/cpu/elementwise.cpp",
        "native/cpu/upsample.cpp",
        "native/addon/addon.cpp",
        "native/addon/js_values.cpp",
        "native/addon/model_binding.cpp",
        "native/addon/op_params.cpp",
        "native/addon/ops_binding.cpp",
        "native/addon/process_binding.cpp"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED", "STEP_SEG_BUILD_GYP", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-fvisibility=hidden"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "OTHER_CPLUSPLUSFLAGS": ["-O3"]
      }
    }
  ]
}
