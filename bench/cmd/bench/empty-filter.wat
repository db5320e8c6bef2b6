;; The bench's empty Wasm filter: a proxy-wasm module whose callbacks (the
;; ones the asyncmesh filter receives on a pass-through request) return at
;; once. Envoy with it is the floor of any Wasm filter on this machine.
;; empty-filter.wasm is committed; regenerate it with wat2wasm (Debian: wabt):
;;   wat2wasm empty-filter.wat -o empty-filter.wasm
(module
  (memory (export "memory") 1)
  (func (export "_initialize"))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_delete") (param i32))
)
