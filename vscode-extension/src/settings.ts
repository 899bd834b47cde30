/**
 * The `repocomplete` configuration section, read into a typed object.
 *
 * Pure functions only (no `vscode` import), so they can be tested without an editor. The server is the authority on
 * its own settings (it validates them and reports problems itself); the client validates them too because it acts on
 * some of them: `enabled` (status bar, toggle, skipping requests), `languages` (the document selector) and `model`
 * (the status bar), and it must not pass its own client-only keys (`serverPath`, `serverArgs`, `trace`) to the server.
 */

import manifest from '../package.json';

export const SECTION = 'repocomplete';

/**
 * One setting as package.json contributes it. Its defaults are the ones VS Code applies (and sends to the server), so
 * they are read from there, not restated here; tests/test_extension_settings.py holds them to the server's owners.
 */
interface Contributed {
    default?: unknown;
    enum?: string[];
    minimum?: number;
    maximum?: number;
}

const CONTRIBUTED = manifest.contributes.configuration.properties as unknown as Record<string, Contributed>;

function contributed(key: string): Contributed {
    const spec = CONTRIBUTED[`${SECTION}.${key}`];
    if (spec === undefined) {
        throw new Error(`package.json contributes no ${SECTION}.${key}`);
    }
    return spec;
}

export const CONTEXT_MODES: readonly string[] = contributed('context').enum ?? [];
export type ContextMode = string;

export const TRACE_LEVELS: readonly string[] = contributed('trace.server').enum ?? [];
export type TraceLevel = string;

export const DEFAULT_LANGUAGES = contributed('languages').default as readonly string[];

/** The settings the server reads (camelCase, as sent in initializationOptions and workspace/configuration). */
export interface ServerSettings {
    enabled: boolean;
    model: string;
    adapter: string | null;
    endpoint: string | null;
    context: ContextMode;
    contextBudget: number;
    maxTokens: number;
    multiline: boolean;
    monitors: string;
    candidates: number;
    debounceMs: number;
    languages: string[];
    completionCacheBytes: number;
}

/** The settings only the extension reads. */
export interface ClientSettings {
    serverPath: string;
    serverArgs: string[];
    traceServer: TraceLevel;
}

export interface Settings {
    server: ServerSettings;
    client: ClientSettings;
    /** One line per value that was rejected (its default is used instead). */
    problems: string[];
}

/** Integer ranges, as package.json declares them (the same as the server's: lsp_server/config.py). */
export const RANGES = {
    contextBudget: range('contextBudget'),
    maxTokens: range('maxTokens'),
    candidates: range('candidates'),
    debounceMs: range('debounceMs'),
    completionCacheBytes: range('completionCacheBytes'),
} as const;

function range(key: string): readonly [number, number] {
    const { minimum, maximum } = contributed(key);
    if (minimum === undefined || maximum === undefined) {
        throw new Error(`package.json gives ${SECTION}.${key} no minimum and maximum`);
    }
    return [minimum, maximum];
}

/** What `vscode.WorkspaceConfiguration` offers that we use; a plain object works too (see `fromObject`). */
export interface ConfigLike {
    get<T>(key: string): T | undefined;
}

/** A ConfigLike over a plain object holding the section (keys such as `trace.server` may be nested or dotted). */
export function fromObject(obj: Record<string, unknown>): ConfigLike {
    return {
        get<T>(key: string): T | undefined {
            if (key in obj) {
                return obj[key] as T;
            }
            let cur: unknown = obj;
            for (const part of key.split('.')) {
                if (cur === null || typeof cur !== 'object' || !(part in (cur as object))) {
                    return undefined;
                }
                cur = (cur as Record<string, unknown>)[part];
            }
            return cur as T;
        },
    };
}

/** A checker gives the (possibly normalised) value, or `{ want }`: what the value must be. */
type Check<T> = (value: unknown) => { value: T } | { want: string };

const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v);

function boolean(): Check<boolean> {
    return (v) => (typeof v === 'boolean' ? { value: v } : { want: 'true or false' });
}

function nonEmptyString(): Check<string> {
    return (v) => (typeof v === 'string' && v.trim() !== '' ? { value: v.trim() } : { want: 'a non-empty string' });
}

const MONITORS = ['deref', 'scope', 'args', 'imports'];

function monitorList(): Check<string> {
    // "auto", "none", "all" or a comma list of the server's monitors (lsp_server/config.py checks the same).
    const what = 'auto, none, all or a comma list of ' + MONITORS.join(', ');
    return (v) => {
        if (typeof v !== 'string') {
            return { want: what };
        }
        const s = v.trim();
        const parts = s.split(',').map((x) => x.trim()).filter((x) => x !== '');
        return s === 'auto' || s === 'none' || s === 'all' || (parts.length > 0 && parts.every((x) => MONITORS.includes(x)))
            ? { value: s } : { want: what };
    };
}

function optionalString(): Check<string | null> {
    // The server takes "" as "none" too.
    return (v) => (v === null || v === '' ? { value: null }
        : typeof v === 'string' ? { value: v } : { want: 'a string or null' });
}

function intIn(lo: number, hi: number): Check<number> {
    return (v) => (isInt(v) && v >= lo && v <= hi ? { value: v } : { want: `an integer in [${lo}, ${hi}]` });
}

function oneOf<T extends string>(values: readonly T[]): Check<T> {
    return (v) => ((values as readonly unknown[]).includes(v) ? { value: v as T } : { want: `one of ${values.join(', ')}` });
}

function stringList(what: string, opts: { allowEmpty: boolean; dedupe: boolean }): Check<string[]> {
    return (v) =>
        Array.isArray(v) && v.every((x) => typeof x === 'string' && x !== '') && (opts.allowEmpty || v.length > 0)
            ? { value: opts.dedupe ? [...new Set(v as string[])] : [...(v as string[])] }
            : { want: what };
}

const SERVER_CHECKS: { [K in keyof ServerSettings]: Check<ServerSettings[K]> } = {
    enabled: boolean(),
    model: nonEmptyString(),
    adapter: optionalString(),
    endpoint: optionalString(),
    context: oneOf(CONTEXT_MODES),
    contextBudget: intIn(...RANGES.contextBudget),
    maxTokens: intIn(...RANGES.maxTokens),
    multiline: boolean(),
    monitors: monitorList(),
    candidates: intIn(...RANGES.candidates),
    debounceMs: intIn(...RANGES.debounceMs),
    languages: stringList('a non-empty list of languageIds', { allowEmpty: false, dedupe: true }),
    completionCacheBytes: intIn(...RANGES.completionCacheBytes),
};

/** The server's keys, in the order of the contract. */
export const SERVER_KEYS = Object.keys(SERVER_CHECKS) as (keyof ServerSettings)[];

/** The defaults: package.json's, which VS Code applies where a setting is not set. */
export const SERVER_DEFAULTS = Object.freeze(Object.fromEntries(
    SERVER_KEYS.map((key) => [key, contributed(key).default]),
)) as Readonly<ServerSettings>;

export const CLIENT_DEFAULTS: Readonly<ClientSettings> = Object.freeze({
    serverPath: contributed('serverPath').default as string,
    serverArgs: contributed('serverArgs').default as string[],
    traceServer: contributed('trace.server').default as TraceLevel,
});

function take<T>(config: ConfigLike, key: string, check: Check<T>, fallback: T, problems: string[]): T {
    const raw = config.get<unknown>(key);
    // undefined: not set anywhere; null: "unset" (as the server reads it), except where null is a value.
    if (raw === undefined || (raw === null && key !== 'adapter' && key !== 'endpoint')) {
        return fallback;
    }
    const out = check(raw);
    if ('want' in out) {
        problems.push(`${SECTION}.${key} must be ${out.want}, got ${JSON.stringify(raw)}; using ${JSON.stringify(fallback)}`);
        return fallback;
    }
    return out.value;
}

/** Read and validate the whole section. Values that fail validation fall back to their defaults (see `problems`). */
export function readSettings(config: ConfigLike): Settings {
    const problems: string[] = [];
    const server = {} as Record<keyof ServerSettings, unknown>;
    for (const key of SERVER_KEYS) {
        const fallback = SERVER_DEFAULTS[key];
        server[key] = take(config, key, SERVER_CHECKS[key] as Check<unknown>,
            Array.isArray(fallback) ? [...fallback] : fallback, problems);
    }
    const client: ClientSettings = {
        serverPath: take(config, 'serverPath', nonEmptyString(), CLIENT_DEFAULTS.serverPath, problems),
        serverArgs: take(config, 'serverArgs', stringList('a list of strings', { allowEmpty: true, dedupe: false }), [...CLIENT_DEFAULTS.serverArgs], problems),
        traceServer: take(config, 'trace.server', oneOf(TRACE_LEVELS), CLIENT_DEFAULTS.traceServer, problems),
    };
    return { server: server as unknown as ServerSettings, client, problems };
}

/**
 * The part of a raw `repocomplete` section object that belongs to the server: the server's keys only, values as the
 * user wrote them (the server validates and reports them). Used for workspace/configuration answers,
 * didChangeConfiguration and initializationOptions, so the server never sees `serverPath`, `serverArgs` or `trace`.
 */
export function serverSection(raw: unknown): Record<string, unknown> | null {
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
        return null;
    }
    const obj = raw as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const key of SERVER_KEYS) {
        if (key in obj && obj[key] !== undefined) {
            out[key] = obj[key];
        }
    }
    return out;
}

/** Settings whose change needs a new client (the server command line, or the document selector). */
export const RESTART_KEYS = ['serverPath', 'serverArgs', 'languages'] as const;

/** Does this configuration change need the server restarted? `affects` is `event.affectsConfiguration`. */
export function needsRestart(affects: (section: string) => boolean): boolean {
    return RESTART_KEYS.some((key) => affects(`${SECTION}.${key}`));
}
