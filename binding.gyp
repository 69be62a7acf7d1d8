{
  "targets": [
    {
      "target_name": "adashift",
      "sources": [
        "<!@(node -p \"require('fs').readdirSync('native/napi').filter(f=>f.endsWith('.cc')).map(f=>'native/napi/'+f).join(' ')\")",
        "<!@(node -p \"['native/core','native/core/ops','native/core/cpu'].flatMap(d=>require('fs').readdirSync(d).filter(f=>f.endsWith('.cc')).map(f=>d+'/'+f)).join(' ')\")"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-fno-math-errno", "-fopenmp-simd", "-fexceptions"],
      "ldflags": ["-pthread"]
    }
  ]
}
