/**
 * A stand-in for the `vscode` module: what the extension and vscode-languageclient use, with state the tests can
 * read and set (`testing`). No VS Code runs here; `setup.ts` makes `require('vscode')` resolve to this file.
 *
 * The configuration defaults come from the extension's own package.json, so the tests see what VS Code would.
 * Anything not defined here resolves to an inert class (see the Proxy at the end), enough for vscode-languageclient
 * to load (it subclasses a few vscode classes at load time).
 */
import * as fs from 'fs';
import * as path from 'path';

// ---- basics ---------------------------------------------------------------------------------------------------

export class Disposable {
    private fn: (() => unknown) | undefined;
    constructor(fn?: () => unknown) {
        this.fn = fn;
    }
    static from(...items: { dispose(): unknown }[]): Disposable {
        return new Disposable(() => items.forEach((d) => d.dispose()));
    }
    dispose(): void {
        const fn = this.fn;
        this.fn = undefined;
        fn?.();
    }
}

export class EventEmitter<T> {
    private listeners: ((e: T) => unknown)[] = [];
    readonly event = (listener: (e: T) => unknown, thisArg?: unknown, disposables?: Disposable[]): Disposable => {
        const bound = thisArg ? listener.bind(thisArg) : listener;
        this.listeners.push(bound);
        const d = new Disposable(() => {
            this.listeners = this.listeners.filter((l) => l !== bound);
        });
        disposables?.push(d);
        return d;
    };
    fire(e: T): void {
        for (const l of [...this.listeners]) {
            l(e);
        }
    }
    get listenerCount(): number {
        return this.listeners.length;
    }
    dispose(): void {
        this.listeners = [];
    }
}

export class CancellationError extends Error {
    constructor() {
        super('Canceled');
        this.name = 'Canceled';
    }
}

export class CancellationTokenSource {
    private emitter = new EventEmitter<void>();
    private cancelled = false;
    readonly token = {
        isCancellationRequested: false,
        onCancellationRequested: this.emitter.event,
    };
    cancel(): void {
        if (!this.cancelled) {
            this.cancelled = true;
            this.token.isCancellationRequested = true;
            this.emitter.fire();
        }
    }
    dispose(): void {
        this.emitter.dispose();
    }
}

export enum ConfigurationTarget { Global = 1, Workspace = 2, WorkspaceFolder = 3 }
export enum StatusBarAlignment { Left = 1, Right = 2 }
export enum ViewColumn { Active = -1, Beside = -2, One = 1, Two = 2 }
export enum LogLevel { Off = 0, Trace = 1, Debug = 2, Info = 3, Warning = 4, Error = 5 }
export enum InlineCompletionTriggerKind { Invoke = 0, Automatic = 1 }

export class ThemeColor {
    constructor(public readonly id: string) {}
}

export class MarkdownString {
    constructor(public value = '') {}
}

export class Position {
    constructor(public readonly line: number, public readonly character: number) {}
    isEqual(other: Position): boolean {
        return this.line === other.line && this.character === other.character;
    }
}

export class Range {
    readonly start: Position;
    readonly end: Position;
    constructor(a: Position | number, b: Position | number, c?: number, d?: number) {
        if (typeof a === 'number') {
            this.start = new Position(a, b as number);
            this.end = new Position(c as number, d as number);
        } else {
            this.start = a;
            this.end = b as Position;
        }
    }
}

export class Selection extends Range {
    readonly anchor: Position;
    readonly active: Position;
    constructor(anchor: Position, active: Position) {
        super(anchor, active);
        this.anchor = anchor;
        this.active = active;
    }
}

export class Uri {
    private constructor(public readonly scheme: string, public readonly path: string) {}
    static file(p: string): Uri {
        return new Uri('file', p);
    }
    static parse(s: string): Uri {
        const m = /^([a-zA-Z][\w+.-]*):(?:\/\/[^/]*)?(.*)$/.exec(s);
        return m ? new Uri(m[1], decodeURIComponent(m[2])) : new Uri('file', s);
    }
    get fsPath(): string {
        return this.path;
    }
    toString(): string {
        return this.scheme === 'file' ? `file://${encodeURI(this.path)}` : `${this.scheme}:${this.path}`;
    }
    toJSON(): unknown {
        return { scheme: this.scheme, path: this.path };
    }
}

export class InlineCompletionItem {
    constructor(public insertText: string | unknown, public range?: Range, public command?: unknown) {}
}

export class InlineCompletionList {
    constructor(public items: InlineCompletionItem[]) {}
}

// ---- configuration ------------------------------------------------------------------------------------------------

interface Scope { global: Map<string, unknown>; workspace: Map<string, unknown>; workspaceFolder: Map<string, unknown> }

const manifest = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8'));
const defaults = new Map<string, unknown>(
    Object.entries(manifest.contributes.configuration.properties as Record<string, { default: unknown }>)
        .map(([k, v]) => [k, v.default]),
);

const scope: Scope = { global: new Map(), workspace: new Map(), workspaceFolder: new Map() };
const configEmitter = new EventEmitter<{ affectsConfiguration(section: string): boolean }>();

function effective(key: string): unknown {
    for (const m of [scope.workspaceFolder, scope.workspace, scope.global]) {
        if (m.has(key)) {
            return m.get(key);
        }
    }
    return defaults.get(key);
}

/** The value at `full`, or the object made of all keys under `full.` (nested by dots), as VS Code returns it. */
function lookup(full: string): unknown {
    const keys = new Set([...defaults.keys(), ...scope.global.keys(), ...scope.workspace.keys(), ...scope.workspaceFolder.keys()]);
    if (keys.has(full)) {
        return effective(full);
    }
    const prefix = full === '' ? '' : `${full}.`;
    const under = [...keys].filter((k) => k.startsWith(prefix));
    if (under.length === 0) {
        return undefined;
    }
    const obj: Record<string, unknown> = {};
    for (const k of under) {
        const parts = k.slice(prefix.length).split('.');
        let cur = obj;
        for (const p of parts.slice(0, -1)) {
            cur = (cur[p] ??= {}) as Record<string, unknown>;
        }
        cur[parts[parts.length - 1]] = structuredClone(effective(k));
    }
    return obj;
}

function affects(changed: string) {
    return (section: string) => changed === section || changed.startsWith(`${section}.`) || section.startsWith(`${changed}.`);
}

export function makeConfiguration(section: string | undefined) {
    const full = (key: string) => (section ? `${section}.${key}` : key);
    const target = {
        get<T>(key: string, fallback?: T): T | undefined {
            const v = lookup(full(key));
            return (v === undefined ? fallback : structuredClone(v)) as T | undefined;
        },
        has(key: string): boolean {
            return lookup(full(key)) !== undefined;
        },
        inspect<T>(key: string) {
            const k = full(key);
            return {
                key: k,
                defaultValue: defaults.get(k) as T | undefined,
                globalValue: scope.global.get(k) as T | undefined,
                workspaceValue: scope.workspace.get(k) as T | undefined,
                workspaceFolderValue: scope.workspaceFolder.get(k) as T | undefined,
            };
        },
        async update(key: string, value: unknown, where?: ConfigurationTarget | boolean | null): Promise<void> {
            const k = full(key);
            testing.updates.push({ key: k, value, target: where });
            const m = where === ConfigurationTarget.Workspace || where === false ? scope.workspace
                : where === ConfigurationTarget.WorkspaceFolder ? scope.workspaceFolder : scope.global;
            if (value === undefined) {
                m.delete(k);
            } else {
                m.set(k, value);
            }
            configEmitter.fire({ affectsConfiguration: affects(k) });
        },
    };
    // Like VS Code's, the object also shows the section's values as properties.
    return new Proxy(target, {
        get(t, prop, receiver) {
            if (typeof prop === 'string' && !(prop in t)) {
                return lookup(full(prop));
            }
            return Reflect.get(t, prop, receiver);
        },
    });
}

// ---- window -------------------------------------------------------------------------------------------------------

export class FakeOutputChannel {
    readonly lines: string[] = [];
    logLevel = LogLevel.Info;
    private levelEmitter = new EventEmitter<LogLevel>();
    readonly onDidChangeLogLevel = this.levelEmitter.event;
    shown = 0;
    constructor(public readonly name: string) {}
    append(s: string): void { this.lines.push(s); }
    appendLine(s: string): void { this.lines.push(s); }
    replace(s: string): void { this.lines.splice(0, this.lines.length, s); }
    clear(): void { this.lines.splice(0); }
    trace(s: string): void { this.lines.push(`[trace] ${s}`); }
    debug(s: string): void { this.lines.push(`[debug] ${s}`); }
    info(s: string): void { this.lines.push(`[info] ${s}`); }
    warn(s: string): void { this.lines.push(`[warn] ${s}`); }
    error(s: string | Error): void { this.lines.push(`[error] ${s instanceof Error ? s.message : s}`); }
    show(): void { this.shown++; }
    hide(): void {}
    dispose(): void {}
}

export class FakeStatusBarItem {
    /** Every text the item has shown, in order. */
    readonly texts: string[] = [];
    private shownText = '';
    get text(): string {
        return this.shownText;
    }
    set text(value: string) {
        this.shownText = value;
        this.texts.push(value);
    }
    tooltip: unknown = undefined;
    command: unknown = undefined;
    backgroundColor: ThemeColor | undefined = undefined;
    visible = false;
    disposed = false;
    constructor(public readonly id: string | undefined, public readonly alignment?: StatusBarAlignment, public readonly priority?: number) {}
    show(): void { this.visible = true; }
    hide(): void { this.visible = false; }
    dispose(): void { this.disposed = true; }
}

interface Message { level: 'info' | 'warning' | 'error'; text: string; items: string[] }

function message(level: Message['level']) {
    return (text: string, ...items: unknown[]): Promise<string | undefined> => {
        const labels = items.filter((i): i is string => typeof i === 'string');
        testing.messages.push({ level, text, items: labels });
        return Promise.resolve(testing.messageAnswer !== undefined && labels.includes(testing.messageAnswer) ? testing.messageAnswer : undefined);
    };
}

export const window = {
    get activeTextEditor() {
        return testing.activeTextEditor;
    },
    visibleTextEditors: [] as unknown[],
    onDidChangeActiveTextEditor: new EventEmitter<unknown>().event,
    onDidChangeVisibleTextEditors: new EventEmitter<unknown>().event,
    tabGroups: {
        all: [] as unknown[],
        onDidChangeTabs: new EventEmitter<unknown>().event,
        onDidChangeTabGroups: new EventEmitter<unknown>().event,
    },
    createOutputChannel(name: string, _options?: unknown): FakeOutputChannel {
        const ch = new FakeOutputChannel(name);
        testing.outputChannels.push(ch);
        return ch;
    },
    createStatusBarItem(id?: string | StatusBarAlignment, alignment?: StatusBarAlignment, priority?: number): FakeStatusBarItem {
        const item = typeof id === 'string' ? new FakeStatusBarItem(id, alignment, priority) : new FakeStatusBarItem(undefined, id, alignment);
        testing.statusBarItems.push(item);
        return item;
    },
    showInformationMessage: message('info'),
    showWarningMessage: message('warning'),
    showErrorMessage: message('error'),
    async showTextDocument(doc: unknown, options?: unknown) {
        testing.shownDocuments.push({ doc, options });
        return { document: doc };
    },
    async withProgress<R>(_options: unknown, task: (p: { report(v: unknown): void }, t: unknown) => Promise<R>): Promise<R> {
        return task({ report() {} }, new CancellationTokenSource().token);
    },
};

// ---- workspace ----------------------------------------------------------------------------------------------------

const openEmitter = new EventEmitter<unknown>();
const closeEmitter = new EventEmitter<unknown>();

export const workspace = {
    get workspaceFolders() {
        return testing.workspaceFolders;
    },
    textDocuments: [] as unknown[],
    notebookDocuments: [] as unknown[],
    getConfiguration(section?: string, _scope?: unknown) {
        return makeConfiguration(section);
    },
    onDidChangeConfiguration: configEmitter.event,
    onDidOpenTextDocument: openEmitter.event,
    onDidCloseTextDocument: closeEmitter.event,
    onDidChangeTextDocument: new EventEmitter<unknown>().event,
    onDidSaveTextDocument: new EventEmitter<unknown>().event,
    onWillSaveTextDocument: new EventEmitter<unknown>().event,
    onDidChangeWorkspaceFolders: new EventEmitter<unknown>().event,
    onDidOpenNotebookDocument: new EventEmitter<unknown>().event,
    onDidCloseNotebookDocument: new EventEmitter<unknown>().event,
    onDidChangeNotebookDocument: new EventEmitter<unknown>().event,
    onDidSaveNotebookDocument: new EventEmitter<unknown>().event,
    onDidCreateFiles: new EventEmitter<unknown>().event,
    onDidRenameFiles: new EventEmitter<unknown>().event,
    onDidDeleteFiles: new EventEmitter<unknown>().event,
    onWillCreateFiles: new EventEmitter<unknown>().event,
    onWillRenameFiles: new EventEmitter<unknown>().event,
    onWillDeleteFiles: new EventEmitter<unknown>().event,
    async openTextDocument(options: { language?: string; content?: string }) {
        const doc = { languageId: options.language ?? 'plaintext', getText: () => options.content ?? '', uri: Uri.parse('untitled:Untitled-1') };
        testing.openedDocuments.push(doc);
        return doc;
    },
    createFileSystemWatcher() {
        return { onDidCreate: new EventEmitter().event, onDidChange: new EventEmitter().event, onDidDelete: new EventEmitter().event, dispose() {} };
    },
};

// ---- commands, languages, env ---------------------------------------------------------------------------------------

const registry = new Map<string, (...args: unknown[]) => unknown>();

export const commands = {
    registerCommand(id: string, handler: (...args: unknown[]) => unknown): Disposable {
        if (registry.has(id)) {
            throw new Error(`command '${id}' already exists`); // as VS Code does
        }
        registry.set(id, handler);
        return new Disposable(() => registry.delete(id));
    },
    async executeCommand<T>(id: string, ...args: unknown[]): Promise<T> {
        testing.executed.push({ id, args });
        const handler = registry.get(id);
        return (handler ? await handler(...args) : undefined) as T;
    },
    async getCommands(): Promise<string[]> {
        return [...registry.keys()];
    },
};

export const languages = {
    registerInlineCompletionItemProvider(selector: unknown, provider: unknown): Disposable {
        const entry = { selector, provider };
        testing.inlineProviders.push(entry);
        return new Disposable(() => {
            testing.inlineProviders = testing.inlineProviders.filter((e) => e !== entry);
        });
    },
    registerCompletionItemProvider(selector: unknown, provider: unknown, ...triggerCharacters: string[]): Disposable {
        const entry = { selector, provider, triggerCharacters };
        testing.completionProviders.push(entry);
        return new Disposable(() => {
            testing.completionProviders = testing.completionProviders.filter((e) => e !== entry);
        });
    },
    match(): number {
        return 10;
    },
    createDiagnosticCollection() {
        return { set() {}, delete() {}, clear() {}, dispose() {}, forEach() {} };
    },
};

export const env = { language: 'en', appName: 'stub', machineId: 'stub', sessionId: 'stub', uiKind: 1 };
export const version = '1.91.0';
export const extensions = { all: [] as unknown[], getExtension: () => undefined };

// ---- what the tests read and set ---------------------------------------------------------------------------------

export interface FakeEditor {
    document: { uri: Uri; languageId: string; getText(): string };
    selection: Selection;
}

export const testing = {
    activeTextEditor: undefined as FakeEditor | undefined,
    workspaceFolders: undefined as { uri: Uri; name: string; index: number }[] | undefined,
    messages: [] as Message[],
    /** The label the next message's buttons answer with (if offered). */
    messageAnswer: undefined as string | undefined,
    outputChannels: [] as FakeOutputChannel[],
    statusBarItems: [] as FakeStatusBarItem[],
    shownDocuments: [] as { doc: unknown; options: unknown }[],
    openedDocuments: [] as { languageId: string; getText(): string }[],
    executed: [] as { id: string; args: unknown[] }[],
    updates: [] as { key: string; value: unknown; target: unknown }[],
    inlineProviders: [] as { selector: unknown; provider: any }[],
    completionProviders: [] as { selector: unknown; provider: any; triggerCharacters: string[] }[],
    registeredCommands: () => [...registry.keys()],
    /** Open a document, as VS Code does when a file is opened (the language client sends didOpen). */
    openDocument(doc: { uri: Uri; languageId: string; version: number; getText(): string }): void {
        workspace.textDocuments.push(doc);
        openEmitter.fire(doc);
    },
    defaults,
    /** Set a configuration value (full key, e.g. `repocomplete.maxTokens`) as if in user or workspace settings. */
    set(key: string, value: unknown, where: 'global' | 'workspace' | 'workspaceFolder' = 'global'): void {
        if (value === undefined) {
            scope[where].delete(key);
        } else {
            scope[where].set(key, value);
        }
        configEmitter.fire({ affectsConfiguration: affects(key) });
    },
    reset(): void {
        testing.activeTextEditor = undefined;
        testing.workspaceFolders = undefined;
        testing.messages = [];
        testing.messageAnswer = undefined;
        testing.outputChannels = [];
        testing.statusBarItems = [];
        testing.shownDocuments = [];
        testing.openedDocuments = [];
        testing.executed = [];
        testing.updates = [];
        testing.inlineProviders = [];
        testing.completionProviders = [];
        workspace.textDocuments.splice(0);
        scope.global.clear();
        scope.workspace.clear();
        scope.workspaceFolder.clear();
        registry.clear();
    },
};

// Anything else vscode-languageclient reaches for at load time: an inert class.
class Inert {
    constructor(..._args: unknown[]) {}
}
module.exports = new Proxy(module.exports, {
    get(target, prop, receiver) {
        if (typeof prop === 'string' && !(prop in target) && prop !== 'then' && prop !== '__esModule' && /^[A-Z]/.test(prop)) {
            return Inert;
        }
        return Reflect.get(target, prop, receiver);
    },
});
