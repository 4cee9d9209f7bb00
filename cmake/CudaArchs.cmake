# SKYSENSE_CUDA_ARCHS from $SKYSENSE_CUDA_ARCHS ("80;90"), else $TORCH_CUDA_ARCH_LIST
# ("8.0 9.0+PTX"), else Ampere + Hopper. Never torch's default list: with no GPU it includes
# compute_50, which nvcc 13 rejects.
if(DEFINED ENV{SKYSENSE_CUDA_ARCHS} AND NOT "$ENV{SKYSENSE_CUDA_ARCHS}" STREQUAL "")
  set(SKYSENSE_CUDA_ARCHS "$ENV{SKYSENSE_CUDA_ARCHS}")
elseif(DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT "$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
  string(REPLACE " " ";" _l "$ENV{TORCH_CUDA_ARCH_LIST}")
  set(SKYSENSE_CUDA_ARCHS "")
  foreach(_a IN LISTS _l)
    string(REPLACE "+PTX" "" _n "${_a}")
    string(REPLACE "." "" _n "${_n}")
    list(APPEND SKYSENSE_CUDA_ARCHS "${_n}")
  endforeach()
else()
  set(SKYSENSE_CUDA_ARCHS "80;90")
endif()
set(CMAKE_CUDA_ARCHITECTURES "${SKYSENSE_CUDA_ARCHS}")
set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)   # share libcudart with torch
message(STATUS "CUDA archs: ${SKYSENSE_CUDA_ARCHS}")
