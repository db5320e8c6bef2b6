// The shared test vectors' shape and where they are (sdk/testdata/vectors.json,
// generated from the Go code; sdk/testdata/README.md describes each field).

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { SealAlgorithm } from "../src/index.js";

/** Where the vectors are: ASYNCMESH_VECTORS, or sdk/testdata/vectors.json from build/test/. */
export function vectorsPath(): string {
  return process.env.ASYNCMESH_VECTORS ?? fileURLToPath(new URL("../../../testdata/vectors.json", import.meta.url));
}

export interface SignatureVector {
  name: string;
  secrets: string[];
  headers: Record<string, string>;
  body: string;
  now: number;
  valid: boolean;
  error?: "signature" | "timestamp" | "missing_headers";
}
export interface SealedVector {
  name: string;
  alg: SealAlgorithm;
  key: string;
  requestId: string;
  contentType: string;
  sealed: string;
  plaintext?: string;
  valid: boolean;
}
export interface ResultVector {
  id: string;
  traceId: string;
  status: string;
  response?: { status: number; headers?: Record<string, string>; bodyBase64: string };
  error?: string;
}
export interface CallbackVector {
  name: string;
  secrets: string[];
  key?: string;
  now: number;
  headers: Record<string, string>;
  body: string;
  requestId: string;
  valid: boolean;
  status: number;
  result?: ResultVector;
}
export interface Vectors {
  version: number;
  tolerance: number;
  signatures: SignatureVector[];
  sealed: SealedVector[];
  callbacks: CallbackVector[];
}

export function loadVectors(): Vectors {
  return JSON.parse(readFileSync(vectorsPath(), "utf8")) as Vectors;
}

