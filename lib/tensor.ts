/** Tensors as the API takes and returns them: a typed array plus its dimensions, row-major. */

export type DType = 'float32' | 'float16' | 'int32' | 'uint8';

export interface DataTypeMap {
  float32: Float32Array;
  float16: Uint16Array;
  int32: Int32Array;
  uint8: Uint8Array;
}

/** A dense row-major tensor. `type` defaults to `'float32'` where a tensor is accepted. */
export interface Tensor<T extends DType = 'float32'> {
  type?: T;
  data: DataTypeMap[T];
  dims: readonly number[];
}

/** Number of elements a shape holds. */
export function numel(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}
