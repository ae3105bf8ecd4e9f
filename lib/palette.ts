/** Pictures of a segmentation: the label map in the model's colours, as PNG. */
import sharp from 'sharp';

import { invalidParameter } from './errors';

/**
 * Encodes a label map as a PNG, each class in its palette colour.
 * @param result `{ labels, width, height }` as `segment()` returns it.
 * @param palette one `[r, g, b]` per class (`model.config.palette`).
 * @example
 * await fs.writeFile('labels.png', await colorize(result, model.config.palette));
 */
export async function colorize(
  result: { labels: Uint8Array | Uint16Array; width: number; height: number },
  palette: readonly (readonly [number, number, number])[],
): Promise<Buffer> {
  const { labels, width, height } = result;
  if (labels.length !== width * height) throw invalidParameter('result.labels', `${width * height} labels`, labels.length);
  const rgb = Buffer.alloc(width * height * 3);
  for (let i = 0; i < labels.length; i++) {
    const c = palette[labels[i]];
    if (!c) throw invalidParameter('palette', `a colour for class ${labels[i]}`, palette.length);
    rgb[3 * i] = c[0];
    rgb[3 * i + 1] = c[1];
    rgb[3 * i + 2] = c[2];
  }
  return sharp(rgb, { raw: { width, height, channels: 3 } }).png().toBuffer();
}
