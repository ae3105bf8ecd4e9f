/**
 * Pictures of a segmentation on its photo, as PNG: the label colours blended over the image
 * (`overlay`), and where the tokens went (`tokenPicture`): superpatch outlines over the photo at the
 * inference size, tokens that exited early tinted by their exit block, and a legend strip.
 *
 * The photo is decoded exactly as `segment()` decodes it (lib/image.ts: EXIF orientation, alpha
 * dropped, resized with the same size rule), so the outlines sit on the pixels the model saw.
 * Legend text is drawn by librsvg (inside sharp's libvips) from an SVG `<text>`, which needs a system
 * font through fontconfig; where none exists (slim containers) librsvg draws nothing, so a built-in
 * 5 x 7 bitmap font takes over (checked once per process).
 */
import sharp from 'sharp';

import { invalidParameter } from './errors';
import { prepareImage, type ImageInput } from './image';

type Rgb = readonly [number, number, number];

/** What `tokenPicture()` reads from a `segment()` result. */
export interface TokenMap {
  gh: number;
  gw: number;
  /** Token index per patch, row-major, `gh * gw`. */
  index: Int32Array;
  /** Side of the patch's token, in patches (1: not merged). */
  size: Uint8Array;
  /** Blocks the patch's token ran before it exited; the model's depth for the final head. */
  exitLayer: Uint8Array;
  /** The model's patch size in pixels. `segment()` results carry it. */
  patchSize?: number;
  /** The model's depth: tokens whose exit layer equals it reached the final head. `segment()` results carry it. */
  depth?: number;
  /** The long side `segment()` ran at (its `size` option, else the model's `input_size`). `segment()` results carry it. */
  inputSize?: number;
}

export interface OverlayOptions {
  /** Weight of the label colour against the photo, 0 (photo only) to 1 (labels only). Default 0.5. */
  alpha?: number;
}

export interface TokenPictureOptions {
  /** The model's patch size in pixels (`model.config.patchSize`). Default: `result.tokenMap.patchSize`. */
  patchSize?: number;
  /** The model's depth (`model.config.depth`): tokens with this exit layer reached the final head. Default: `result.tokenMap.depth`. */
  depth?: number;
  /**
   * The long side `segment()` ran at (its `size` option; the model's `input_size` when not given).
   * Default: `result.tokenMap.inputSize`, else the token grid's long side times the patch size, which
   * is right whenever that size was a multiple of the patch size. A size that does not give the
   * result's patch grid is an error.
   */
  size?: number;
  /** Draw the legend strip below the picture. Default true. */
  legend?: boolean;
  /** Legend text: `'auto'` (default: a system font when librsvg finds one, else built-in), `'system'`, `'builtin'`. */
  font?: 'auto' | 'system' | 'builtin';
}

// ---------------------------------------------------------------------------------------------------
// overlay

/**
 * The label map's colours blended over the photo, at the photo's own size.
 * @param image the image given to `segment()`: a path, an encoded image Buffer, or raw pixels.
 * @param result `{ labels, width, height }` as `segment()` returns it.
 * @param palette one `[r, g, b]` per class (`model.config.palette`).
 * @param options `alpha` (default 0.5): the labels' weight, 0 to 1.
 * @returns a PNG, `result.width` x `result.height`, RGB.
 * @throws {BadInputError} an unreadable image, a label without a palette colour, or a bad option.
 * @example
 * const result = await model.segment('street.jpg');
 * await fs.writeFile('overlay.png', await overlay('street.jpg', result, model.config.palette, { alpha: 0.4 }));
 */
export async function overlay(
  image: ImageInput,
  result: { labels: Uint8Array | Uint16Array; width: number; height: number },
  palette: readonly Rgb[],
  options?: OverlayOptions,
): Promise<Buffer> {
  const o = checkObject(options, 'options');
  const alpha = o.alpha ?? 0.5;
  if (typeof alpha !== 'number' || !(alpha >= 0 && alpha <= 1)) throw invalidParameter('options.alpha', 'a number from 0 to 1', alpha);
  const { labels, width, height } = checkResult(result);
  if (!(labels instanceof Uint8Array || labels instanceof Uint16Array) || labels.length !== width * height)
    throw invalidParameter('result.labels', `${width * height} labels (width x height)`, labels?.length);
  if (!Array.isArray(palette)) throw invalidParameter('palette', 'an array of [r, g, b] colours', palette);
  const rgb = await photoAt(image, width, height); // (height, width, 3)
  const keep = 1 - alpha;
  for (let i = 0; i < labels.length; i++) {
    const c = palette[labels[i]];
    if (!c) throw invalidParameter('palette', `a colour for class ${labels[i]}`, palette.length);
    const p = 3 * i;
    rgb[p] = Math.round(keep * rgb[p] + alpha * c[0]);
    rgb[p + 1] = Math.round(keep * rgb[p + 1] + alpha * c[1]);
    rgb[p + 2] = Math.round(keep * rgb[p + 2] + alpha * c[2]);
  }
  return sharp(rgb, { raw: { width, height, channels: 3 } }).png().toBuffer();
}

// The photo decoded as segment() decodes it, at exactly width x height (RGB, row-major).
async function photoAt(image: ImageInput, width: number, height: number): Promise<Buffer> {
  const p = await prepareImage(image, Math.max(width, height));
  if (p.resizedWidth === width && p.resizedHeight === height) return p.data;
  // another aspect ratio than the result's: stretch, as the label map is what the picture is about
  return sharp(p.data, { raw: { width: p.resizedWidth, height: p.resizedHeight, channels: 3 } })
    .resize(width, height, { fit: 'fill' })
    .raw()
    .toBuffer();
}

// ---------------------------------------------------------------------------------------------------
// tokenPicture

const kOutline: Rgb = [255, 255, 255];
const kTint = 0.45; // weight of an exit colour over the photo
const kLegendBackground: Rgb = [28, 28, 28];
const kLegendText: Rgb = [235, 235, 235];
// Early exits warm: the first block red, through orange, to yellow for the last block before the head.
const kExitStops: Rgb[] = [
  [215, 48, 39],
  [252, 141, 89],
  [254, 224, 144],
];

/** The tint of tokens that exited after block `layer` of a `depth`-block model. */
export function exitColor(layer: number, depth: number): Rgb {
  const t = depth > 2 ? Math.min(1, Math.max(0, (layer - 1) / (depth - 2))) : 0;
  const f = t * (kExitStops.length - 1), i = Math.min(kExitStops.length - 2, Math.floor(f)), u = f - i;
  const a = kExitStops[i], b = kExitStops[i + 1];
  return [0, 1, 2].map((c) => Math.round(a[c] + u * (b[c] - a[c]))) as unknown as Rgb;
}

/**
 * Where the tokens went: the photo at the inference size with an outline around every token
 * (superpatches are the large squares), tokens that exited early tinted by their exit block (early
 * warm, red to yellow; tokens that reached the final head untinted), and a legend strip below with
 * the tokens per exit and per superpatch size.
 * @param image the image given to `segment()`.
 * @param result `{ width, height, tokenMap }` as `segment()` returns it.
 * @param options `patchSize`, `depth` and `size` (the model's patch size and depth, the long side
 *   `segment()` ran at; default: what `result.tokenMap` carries, which a `segment()` result always
 *   does), `legend` (default true), `font` (`'auto'`, `'system'` or `'builtin'`).
 * @returns a PNG, the inference size wide (long side `size`), with the legend below the photo.
 * @throws {BadInputError} an unreadable image, a token map that does not fit the size, or a bad option.
 * @example
 * const result = await model.segment('street.jpg', { size: 1024 });
 * const png = await tokenPicture('street.jpg', result);
 */
export async function tokenPicture(
  image: ImageInput,
  result: { width: number; height: number; tokenMap: TokenMap },
  options?: TokenPictureOptions,
): Promise<Buffer> {
  const o = checkObject(options, 'options');
  checkResult(result);
  const map = result.tokenMap;
  if (!map || typeof map !== 'object') throw invalidParameter('result.tokenMap', 'the tokenMap of a segment() result', map);
  const P = o.patchSize ?? map.patchSize, depth = o.depth ?? map.depth;
  if (!Number.isInteger(P) || (P as number) < 1)
    throw invalidParameter('options.patchSize', 'a positive integer (model.config.patchSize; a segment() result carries it as tokenMap.patchSize)', P);
  if (!Number.isInteger(depth) || (depth as number) < 1)
    throw invalidParameter('options.depth', 'a positive integer (model.config.depth; a segment() result carries it as tokenMap.depth)', depth);
  const legend = o.legend ?? true;
  if (typeof legend !== 'boolean') throw invalidParameter('options.legend', 'a boolean', legend);
  const font = o.font ?? 'auto';
  if (font !== 'auto' && font !== 'system' && font !== 'builtin') throw invalidParameter('options.font', "'auto', 'system' or 'builtin'", font);
  const { gh, gw, index, size: side, exitLayer } = map;
  const n = gh * gw;
  if (!Number.isInteger(n) || n < 1 || !(index instanceof Int32Array) || index.length !== n || !(side instanceof Uint8Array) || side.length !== n || !(exitLayer instanceof Uint8Array) || exitLayer.length !== n)
    throw invalidParameter('result.tokenMap', '{ gh, gw, index: Int32Array, size: Uint8Array, exitLayer: Uint8Array } of gh x gw entries', map);
  const size = o.size ?? map.inputSize ?? Math.max(gh, gw) * (P as number);
  if (!Number.isInteger(size) || (size as number) < 1) throw invalidParameter('options.size', 'a positive integer (the size segment() ran at)', size);

  const photo = await prepareImage(image, size as number);
  const w = photo.resizedWidth, h = photo.resizedHeight, rgb = photo.data; // (h, w, 3)
  if (Math.ceil(w / (P as number)) !== gw || Math.ceil(h / (P as number)) !== gh)
    throw invalidParameter(
      'options.size',
      `the size segment() ran at: ${size} gives a ${Math.ceil(h / (P as number))} x ${Math.ceil(w / (P as number))} patch grid, the result's is ${gh} x ${gw}`,
      size,
    );
  drawTokens(rgb, w, h, map, P as number, depth as number);
  if (!legend) return sharp(rgb, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer();
  return appendLegend(rgb, w, h, legendItems(map, depth as number), font);
}

// Tints early-exit tokens and outlines every token, in place. rgb: (h, w, 3).
function drawTokens(rgb: Buffer, w: number, h: number, map: TokenMap, P: number, depth: number): void {
  const { gw, index, exitLayer } = map;
  const tints = new Map<number, Rgb>();
  for (let y = 0; y < h; y++) {
    const row = Math.floor(y / P) * gw, below = y + 1 < h ? Math.floor((y + 1) / P) * gw : row;
    for (let x = 0; x < w; x++) {
      const cx = Math.floor(x / P), cell = row + cx, p = 3 * (y * w + x);
      const right = x + 1 < w ? row + Math.floor((x + 1) / P) : cell;
      if (index[right] !== index[cell] || index[below + cx] !== index[cell]) {
        rgb[p] = kOutline[0], rgb[p + 1] = kOutline[1], rgb[p + 2] = kOutline[2];
        continue;
      }
      const e = exitLayer[cell];
      if (e >= depth) continue;
      let t = tints.get(e);
      if (!t) tints.set(e, (t = exitColor(e, depth)));
      for (let c = 0; c < 3; c++) rgb[p + c] = Math.round((1 - kTint) * rgb[p + c] + kTint * t[c]);
    }
  }
}

interface LegendItem {
  swatch?: Rgb | 'final';
  text: string;
  /** Start a new row before this item. */
  newRow?: boolean;
}

// Legend contents: tokens per exit (early exits, then the final head), tokens per superpatch size.
function legendItems(map: TokenMap, depth: number): LegendItem[] {
  const seen = new Set<number>(), perExit = new Map<number, number>(), perSide = new Map<number, number>();
  for (let i = 0; i < map.index.length; i++) {
    const t = map.index[i];
    if (seen.has(t)) continue;
    seen.add(t);
    const e = Math.min(map.exitLayer[i], depth);
    perExit.set(e, (perExit.get(e) ?? 0) + 1);
    perSide.set(map.size[i], (perSide.get(map.size[i]) ?? 0) + 1);
  }
  const items: LegendItem[] = [];
  for (const e of [...perExit.keys()].sort((a, b) => a - b))
    items.push(
      e < depth
        ? { swatch: exitColor(e, depth), text: `exit after block ${e}: ${perExit.get(e)}` }
        : { swatch: 'final', text: `final head: ${perExit.get(e)}` },
    );
  items.push({ text: 'tokens per superpatch:', newRow: true });
  for (const s of [...perSide.keys()].sort((a, b) => b - a)) items.push({ text: `${s}x${s}: ${perSide.get(s)}` });
  const patches = map.index.length;
  items.push({ text: `(${seen.size} tokens for ${patches} patches, ${((100 * seen.size) / patches).toFixed(0)}%)` });
  return items;
}

interface Placed {
  item: LegendItem;
  x: number; // left of the swatch, or of the text when there is none
  row: number;
}

interface Metrics {
  charW: number; // estimated advance per character
  lineH: number; // row height
  swatch: number; // swatch side
  pad: number;
}

function layout(items: LegendItem[], width: number, m: Metrics): { placed: Placed[]; rows: number } {
  const placed: Placed[] = [];
  let row = 0, x = m.pad;
  for (const item of items) {
    const w = (item.swatch ? m.swatch + Math.round(m.charW) : 0) + Math.ceil(item.text.length * m.charW);
    if (item.newRow && placed.length) (row++, (x = m.pad));
    else if (x > m.pad && x + w > width - m.pad) (row++, (x = m.pad));
    placed.push({ item, x, row });
    x += w + Math.round(1.5 * m.charW);
  }
  return { placed, rows: row + 1 };
}

// The photo with the legend strip below: swatches drawn into the pixels, text by librsvg or built in.
async function appendLegend(photo: Buffer, w: number, h: number, items: LegendItem[], font: 'auto' | 'system' | 'builtin'): Promise<Buffer> {
  const system = font === 'system' || (font === 'auto' && (await systemFontWorks()));
  const fontSize = Math.min(18, Math.max(10, Math.round(w / 48)));
  const scale = Math.max(1, Math.round(fontSize / 9)); // built-in glyphs: 5 x 7 cells, scaled
  const m: Metrics = system
    ? { charW: 0.58 * fontSize, lineH: Math.round(1.6 * fontSize), swatch: Math.round(0.8 * fontSize), pad: Math.round(0.6 * fontSize) }
    : { charW: 6 * scale, lineH: 12 * scale, swatch: 7 * scale, pad: 4 * scale };
  const { placed, rows } = layout(items, w, m);
  const lh = rows * m.lineH + m.pad;
  const legend = Buffer.alloc(w * lh * 3); // (lh, w, 3)
  for (let i = 0; i < legend.length; i += 3) (legend[i] = kLegendBackground[0]), (legend[i + 1] = kLegendBackground[1]), (legend[i + 2] = kLegendBackground[2]);
  const top = (row: number) => Math.round(m.pad / 2) + row * m.lineH;
  const texts: { x: number; y: number; text: string }[] = [];
  for (const { item, x, row } of placed) {
    let tx = x;
    if (item.swatch) {
      const sy = top(row) + Math.round((m.lineH - m.swatch) / 2);
      if (item.swatch === 'final') {
        fillRect(legend, w, lh, x, sy, m.swatch, m.swatch, kOutline);
        fillRect(legend, w, lh, x + 1, sy + 1, m.swatch - 2, m.swatch - 2, [110, 110, 110]);
      } else fillRect(legend, w, lh, x, sy, m.swatch, m.swatch, item.swatch);
      tx = x + m.swatch + Math.round(m.charW);
    }
    texts.push({ x: tx, y: top(row), text: item.text });
  }
  if (system) {
    // librsvg draws the text on a transparent layer; blended here so that the PNG stays RGB
    const baseline = (y: number) => Math.round(y + m.lineH / 2 + 0.35 * fontSize);
    const svg =
      `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${lh}">` +
      texts
        .map((t) => `<text x="${t.x}" y="${baseline(t.y)}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="${fontSize}" fill="rgb(${kLegendText.join(',')})">${escapeXml(t.text)}</text>`)
        .join('') +
      `</svg>`;
    const { data: layer, info } = await sharp(Buffer.from(svg)).ensureAlpha().raw().toBuffer({ resolveWithObject: true }); // (lh, w, 4)
    if (info.width !== w || info.height !== lh) throw new Error(`the legend text layer is ${info.width} x ${info.height}, expected ${w} x ${lh}`);
    for (let i = 0, j = 0; i < legend.length; i += 3, j += 4) {
      const a = layer[j + 3] / 255;
      if (a > 0) for (let c = 0; c < 3; c++) legend[i + c] = Math.round((1 - a) * legend[i + c] + a * layer[j + c]);
    }
  } else for (const t of texts) drawText(legend, w, lh, t.x, t.y + Math.round((m.lineH - 7 * scale) / 2), t.text, scale);
  return sharp(Buffer.concat([photo, legend]), { raw: { width: w, height: h + lh, channels: 3 } }).png().toBuffer();
}

let fontProbe: Promise<boolean> | undefined;

/** Whether librsvg draws SVG text here (it draws nothing when fontconfig finds no font). */
function systemFontWorks(): Promise<boolean> {
  fontProbe ??= (async () => {
    const svg = '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="24"><text x="2" y="18" font-family="sans-serif" font-size="16" fill="#fff">x0</text></svg>';
    try {
      const { data } = await sharp(Buffer.from(svg)).ensureAlpha().raw().toBuffer({ resolveWithObject: true });
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) return true;
    } catch {
      // no SVG support in this libvips: the built-in font draws the legend
    }
    return false;
  })();
  return fontProbe;
}

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

// Fills a rectangle of an (ih, iw, 3) image, clipped to it.
function fillRect(img: Buffer, iw: number, ih: number, x0: number, y0: number, rw: number, rh: number, c: Rgb): void {
  for (let y = Math.max(0, y0); y < Math.min(ih, y0 + rh); y++)
    for (let x = Math.max(0, x0); x < Math.min(iw, x0 + rw); x++) {
      const p = 3 * (y * iw + x);
      img[p] = c[0], img[p + 1] = c[1], img[p + 2] = c[2];
    }
}

// The built-in font: 5 x 7 cells, one string of 7 rows per glyph, '#' set. Lower case, digits and the
// punctuation the legend uses; other characters draw as blanks (upper case as lower case).
const kGlyphs: Record<string, string> = {
  a: '..... ..... .###. ....# .#### #...# .####',
  b: '#.... #.... #.##. ##..# #...# #...# ####.',
  c: '..... ..... .###. #.... #.... #...# .###.',
  d: '....# ....# .##.# #..## #...# #...# .####',
  e: '..... ..... .###. #...# ##### #.... .###.',
  f: '..##. .#..# .#... ###.. .#... .#... .#...',
  g: '..... .#### #...# #...# .#### ....# .###.',
  h: '#.... #.... #.##. ##..# #...# #...# #...#',
  i: '..#.. ..... .##.. ..#.. ..#.. ..#.. .###.',
  j: '...#. ..... ..##. ...#. ...#. #..#. .##..',
  k: '#.... #.... #..#. #.#.. ##... #.#.. #..#.',
  l: '.##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.',
  m: '..... ..... ##.#. #.#.# #.#.# #...# #...#',
  n: '..... ..... #.##. ##..# #...# #...# #...#',
  o: '..... ..... .###. #...# #...# #...# .###.',
  p: '..... ..... ####. #...# ####. #.... #....',
  q: '..... ..... .##.# #..## .#### ....# ....#',
  r: '..... ..... #.##. ##..# #.... #.... #....',
  s: '..... ..... .###. #.... .###. ....# ####.',
  t: '.#... .#... ###.. .#... .#... .#..# ..##.',
  u: '..... ..... #...# #...# #...# #..## .##.#',
  v: '..... ..... #...# #...# #...# .#.#. ..#..',
  w: '..... ..... #...# #...# #.#.# #.#.# .#.#.',
  x: '..... ..... #...# .#.#. ..#.. .#.#. #...#',
  y: '..... ..... #...# #...# .#### ....# .###.',
  z: '..... ..... ##### ...#. ..#.. .#... #####',
  '0': '.###. #...# #..## #.#.# ##..# #...# .###.',
  '1': '..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.',
  '2': '.###. #...# ....# ...#. ..#.. .#... #####',
  '3': '##### ...#. ..#.. ...#. ....# #...# .###.',
  '4': '...#. ..##. .#.#. #..#. ##### ...#. ...#.',
  '5': '##### #.... ####. ....# ....# #...# .###.',
  '6': '..##. .#... #.... ####. #...# #...# .###.',
  '7': '##### ....# ...#. ..#.. .#... .#... .#...',
  '8': '.###. #...# #...# .###. #...# #...# .###.',
  '9': '.###. #...# #...# .#### ....# ...#. .##..',
  ':': '..... .##.. .##.. ..... .##.. .##.. .....',
  '(': '...#. ..#.. .#... .#... .#... ..#.. ...#.',
  ')': '.#... ..#.. ...#. ...#. ...#. ..#.. .#...',
  ',': '..... ..... ..... ..... .##.. ..#.. .#...',
  '.': '..... ..... ..... ..... ..... .##.. .##..',
  '%': '##... ##..# ...#. ..#.. .#... #..## ...##',
  '-': '..... ..... ..... ##### ..... ..... .....',
  '/': '..... ....# ...#. ..#.. .#... #.... .....',
  '=': '..... ..... ##### ..... ##### ..... .....',
};

// Draws text with the built-in font, top-left at (x0, y0), each cell `scale` pixels.
function drawText(img: Buffer, iw: number, ih: number, x0: number, y0: number, text: string, scale: number): void {
  for (let k = 0; k < text.length; k++) {
    const glyph = kGlyphs[text[k].toLowerCase()];
    if (!glyph) continue;
    const rows = glyph.split(' ');
    for (let r = 0; r < 7; r++)
      for (let c = 0; c < 5; c++)
        if (rows[r][c] === '#') fillRect(img, iw, ih, x0 + (6 * k + c) * scale, y0 + r * scale, scale, scale, kLegendText);
  }
}

// ---------------------------------------------------------------------------------------------------
// checks

function checkObject(options: unknown, name: string): Record<string, unknown> {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object' || Array.isArray(options)) throw invalidParameter(name, 'an object', options);
  return options as Record<string, unknown>;
}

function checkResult<T extends { width: number; height: number }>(result: T): T {
  if (!result || typeof result !== 'object') throw invalidParameter('result', 'a segment() result', result);
  if (!Number.isInteger(result.width) || result.width < 1) throw invalidParameter('result.width', 'a positive integer', result.width);
  if (!Number.isInteger(result.height) || result.height < 1) throw invalidParameter('result.height', 'a positive integer', result.height);
  return result;
}
