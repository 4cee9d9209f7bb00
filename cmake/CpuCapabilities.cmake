# Compile each CPU kernel source once per instruction set (DEFAULT, AVX2, AVX512), as ATen
# does: each copy lives in its own CPU_CAPABILITY namespace, so at::vec::Vectorized and our
# kernels never clash, and csrc/cpu_capability.h picks one at run time.
# OpenMP is required: at::parallel_for is a header template, and without -fopenmp it
# silently runs on one thread.
find_package(OpenMP REQUIRED COMPONENTS CXX)
function(skysense_cpu_kernel_objects target sources)
  set(_caps DEFAULT)
  set(_flags_DEFAULT "")
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
    list(APPEND _caps AVX2 AVX512)
    set(_flags_AVX2 -mavx2 -mfma -mf16c)
    set(_flags_AVX512 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c)
  endif()
  add_library(${target} INTERFACE)
  target_link_libraries(${target} INTERFACE OpenMP::OpenMP_CXX)
  foreach(_cap IN LISTS _caps)
    add_library(${target}_${_cap} OBJECT ${sources})
    target_include_directories(${target}_${_cap} PRIVATE ${CMAKE_SOURCE_DIR}/csrc)
    target_include_directories(${target}_${_cap} SYSTEM PRIVATE
      "${TORCH_DIR}/include" "${TORCH_DIR}/include/torch/csrc/api/include")
    target_compile_definitions(${target}_${_cap} PRIVATE
      CPU_CAPABILITY=${_cap} CPU_CAPABILITY_${_cap} _GLIBCXX_USE_CXX11_ABI=${TORCH_CXX11_ABI})
    target_compile_options(${target}_${_cap} PRIVATE -O3 ${_flags_${_cap}} -Wall -Wno-unused-parameter)
    target_link_libraries(${target}_${_cap} PRIVATE OpenMP::OpenMP_CXX)
    target_sources(${target} INTERFACE $<TARGET_OBJECTS:${target}_${_cap}>)
    target_compile_definitions(${target} INTERFACE SKYSENSE_HAVE_${_cap})
  endforeach()
endfunction()
