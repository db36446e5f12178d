import { z } from 'zod';
import { BatonError } from './errors.js';

/**
 * One way every Baton process reads its configuration: the schema's defaults, overlaid by a JSON
 * file, overlaid by `BATON_*` environment variables. The environment names are derived from the
 * schema (`http.port` → `BATON_HTTP_PORT`), so documentation and deploy files cannot drift from
 * it. An invalid configuration names every bad field and where it came from.
 */
export const ENV_PREFIX = 'BATON_';

type Plain = Record<string, unknown>;

export interface ConfigSources {
  /** The parsed file, if one was given. */
  file?: { path: string; text: string };
  env: Readonly<Record<string, string | undefined>>;
}

export interface ConfigIssue {
  field: string;
  source: string;
  message: string;
}

function unwrap(schema: z.ZodType): z.ZodType {
  let s: z.ZodType = schema;
  while (s instanceof z.ZodDefault || s instanceof z.ZodOptional || s instanceof z.ZodNullable || s instanceof z.ZodPrefault) {
    s = s.unwrap() as z.ZodType;
  }
  return s;
}

/**
 * How an environment value becomes a field's value: `text` as it is, `json` parsed, `either`
 * (a union that accepts text) parsed when it is JSON and taken as text otherwise.
 */
export type EnvEncoding = 'text' | 'json' | 'either';

function encodingOf(schema: z.ZodType): EnvEncoding {
  const inner = unwrap(schema);
  if (inner instanceof z.ZodString || inner instanceof z.ZodEnum) return 'text';
  if (inner instanceof z.ZodUnion) return (inner.options as z.ZodType[]).some((o) => encodingOf(o) !== 'json') ? 'either' : 'json';
  return 'json';
}

/** Leaf fields of an object schema, as dotted paths, with how their environment value is read. */
export function configFields(schema: z.ZodType, prefix: string[] = []): { path: string[]; encoding: EnvEncoding }[] {
  const inner = unwrap(schema);
  if (inner instanceof z.ZodObject) {
    return Object.entries(inner.shape as Record<string, z.ZodType>).flatMap(([key, child]) => configFields(child, [...prefix, key]));
  }
  return [{ path: prefix, encoding: encodingOf(inner) }];
}

export function envName(path: readonly string[]): string {
  return ENV_PREFIX + path.map((p) => p.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_');
}

function isPlain(v: unknown): v is Plain {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function deepMerge(base: Plain, over: Plain): Plain {
  const out: Plain = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const prev = out[k];
    out[k] = isPlain(prev) && isPlain(v) ? deepMerge(prev, v) : v;
  }
  return out;
}

function setPath(target: Plain, path: readonly string[], value: unknown): void {
  let node = target;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    node[key] = isPlain(next) ? next : {};
    node = node[key] as Plain;
  }
  node[path[path.length - 1]!] = value;
}

function invalid(issues: ConfigIssue[]): BatonError {
  const lines = issues.map((i) => `${i.field} (${i.source}): ${i.message}`);
  return new BatonError('INVALID_CONFIG', `invalid configuration:\n  ${lines.join('\n  ')}`, { details: { issues } });
}

export function loadConfig<S extends z.ZodType>(schema: S, sources: ConfigSources): z.output<S> {
  const issues: ConfigIssue[] = [];
  const origin = new Map<string, string>();
  let merged: Plain = {};

  if (sources.file) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(sources.file.text);
    } catch (err) {
      throw invalid([{ field: '(file)', source: sources.file.path, message: `not valid JSON: ${(err as Error).message}` }]);
    }
    if (!isPlain(parsed)) throw invalid([{ field: '(file)', source: sources.file.path, message: 'must hold a JSON object' }]);
    merged = deepMerge(merged, parsed);
  }

  for (const field of configFields(schema)) {
    const name = envName(field.path);
    const raw = sources.env[name];
    if (raw === undefined) continue;
    let value: unknown = raw;
    if (field.encoding !== 'text') {
      try {
        value = JSON.parse(raw);
      } catch {
        if (field.encoding === 'json') {
          issues.push({ field: field.path.join('.'), source: name, message: `not a JSON value: ${JSON.stringify(raw)}` });
          continue;
        }
      }
    }
    setPath(merged, field.path, value);
    origin.set(field.path.join('.'), name);
  }
  // Validate even when some variables were unreadable: every bad field is named at once.
  const result = schema.safeParse(merged);
  if (result.success && issues.length === 0) return result.data as z.output<S>;
  const fileName = sources.file?.path ?? 'defaults';
  const reported = new Set(issues.map((i) => i.field));
  for (const issue of result.success ? [] : result.error.issues) {
    const field = issue.path.join('.') || '(root)';
    if (reported.has(field)) continue;
    const source = [...origin.entries()].find(([p]) => field === p || field.startsWith(`${p}.`))?.[1] ?? fileName;
    issues.push({ field, source, message: issue.message });
  }
  throw invalid(issues);
}

/** A path in a configuration that must not depend on the process's working directory. */
export const AbsolutePath = z.string().startsWith('/', 'must be an absolute path');

/**
 * A client's TLS, as PEM files: the CA that signed the server's certificate, and this process's
 * own certificate and key for a server that verifies its clients.
 */
export const TlsFilesSchema = z
  .strictObject({
    caFile: AbsolutePath,
    certFile: AbsolutePath.optional(),
    keyFile: AbsolutePath.optional(),
  })
  .refine((t) => (t.certFile === undefined) === (t.keyFile === undefined), { message: 'certFile and keyFile go together' });

/** A user and the file holding its password ({@link readSecretFile}): the password never appears in the configuration. */
export const PasswordAuthSchema = z.strictObject({
  username: z.string().min(1),
  /** The password is read from this file (mode 0600), never from the config itself. */
  passwordFile: AbsolutePath,
});

/**
 * What {@link readSecretFile} needs of the file system. Core does no I/O itself: the adapters
 * pass `node:fs`, so every secret file is checked by this one rule.
 */
export interface SecretFileReader {
  statSync(path: string): { mode: number };
  readFileSync(path: string, encoding: 'utf8'): string;
}

/**
 * The secret (a password) held by the file a configuration field names, without its trailing
 * newline. A file group or others can read is refused: whoever reads it holds the process's
 * credentials. Every failure is INVALID_CONFIG naming the field (`details.field`).
 */
export function readSecretFile(field: string, path: string, fs: SecretFileReader): string {
  const unreadable = (err: unknown): BatonError =>
    new BatonError('INVALID_CONFIG', `${field} ${path} cannot be read (${String((err as { code?: unknown }).code ?? (err as Error).message)})`, { details: { field }, cause: err });
  let mode: number;
  try {
    mode = fs.statSync(path).mode & 0o777;
  } catch (err) {
    throw unreadable(err);
  }
  if ((mode & 0o077) !== 0) {
    throw new BatonError('INVALID_CONFIG', `${field} ${path} has mode ${mode.toString(8)}; it must not be readable by group or others (chmod 600)`, { details: { field, mode: mode.toString(8) } });
  }
  try {
    return fs.readFileSync(path, 'utf8').trim();
  } catch (err) {
    // Mode 0600 but another user's file (EACCES), or a directory (EISDIR): the same refusal.
    throw unreadable(err);
  }
}
