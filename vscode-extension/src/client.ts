/**
 * The language client: how `repocomplete serve` is started, what the client tells it, and a small manager that
 * starts, stops and restarts it and feeds the status bar.
 *
 * Inline completions (ghost text) need no code of our own: vscode-languageclient (9 and later) registers a
 * `vscode.InlineCompletionItemProvider` when the server advertises `inlineCompletionProvider`, forwards
 * `textDocument/inlineCompletion` with VS Code's cancellation token (so a cancelled request becomes `$/cancelRequest`)
 * and converts the result. The middleware here only skips requests while completions are turned off.
 */
import * as os from 'os';
import * as vscode from 'vscode';
import {
    DidChangeConfigurationNotification,
    ExecuteCommandRequest,
    LanguageClient,
    type DocumentSelector,
    type RequestType,
    type Executable,
    type LanguageClientOptions,
    type Middleware,
    type StaticFeature,
    type DynamicFeature,
    RevealOutputChannelOn,
    State,
    type WorkDoneProgressBegin,
    type WorkDoneProgressEnd,
    type WorkDoneProgressReport,
} from 'vscode-languageclient/node';
import {
    SECTION,
    SERVER_KEYS,
    serverSection,
    type ConfigLike,
    type Settings,
} from './settings';
import {
    RESTART_COMMAND,
    SHOW_CONTEXT_COMMAND,
    SHOW_LOG_COMMAND,
    STATUS_NOTIFICATION,
    TOGGLE_COMMAND,
    type ProgressValue,
    type StatusEvent,
    type StatusParams,
} from './statusBar';

/** The client id: VS Code reads `repocomplete.trace.server` through it. */
export const CLIENT_ID = SECTION;
export const CLIENT_NAME = 'repocomplete';
/** The server's subcommand: `repocomplete serve` speaks LSP on stdio. */
export const SERVE_ARGS: readonly string[] = ['serve'];
/** URI schemes whose documents go to the server. */
export const SCHEMES: readonly string[] = ['file', 'untitled'];

/**
 * Commands the extension registers itself. The server advertises `repocomplete.showContext` in
 * `executeCommandProvider` too; vscode-languageclient would register a VS Code command of that name for it, and VS
 * Code refuses a second command of one name ("command ... already exists"), which fails the client's start. So those
 * names are left out of what the client registers for the server (we call the server's command ourselves).
 */
export const EXTENSION_COMMANDS: readonly string[] = [TOGGLE_COMMAND, SHOW_CONTEXT_COMMAND, RESTART_COMMAND, SHOW_LOG_COMMAND];

export function withoutExtensionCommands(commands: readonly string[] | undefined): string[] {
    return (commands ?? []).filter((c) => !EXTENSION_COMMANDS.includes(c));
}

/** `~` and `${workspaceFolder}` / `${userHome}` in the server path and arguments. */
export function expandVariables(value: string, env: { home: string; workspaceFolder?: string }): string {
    let out = value;
    if (out === '~' || out.startsWith('~/')) {
        out = env.home + out.slice(1);
    }
    out = out.replace(/\$\{userHome\}/g, env.home);
    if (env.workspaceFolder !== undefined) {
        out = out.replace(/\$\{workspaceFolder\}/g, env.workspaceFolder);
    }
    return out;
}

/**
 * How to start the server: `<serverPath> serve <serverArgs...>` on stdio. No `transport` is set: with
 * `TransportKind.stdio` the client would append `--stdio` to the arguments, which `repocomplete serve` does not take
 * (stdio is what an Executable without a transport uses anyway).
 */
export function buildServerOptions(
    settings: Settings, env: { home: string; workspaceFolder?: string; processEnv?: NodeJS.ProcessEnv },
): Executable {
    const exp = (s: string) => expandVariables(s, env);
    return {
        command: exp(settings.client.serverPath),
        args: [...SERVE_ARGS, ...settings.client.serverArgs.map(exp)],
        options: {
            cwd: env.workspaceFolder,
            env: { ...(env.processEnv ?? process.env) },
        },
    };
}

/** One filter per language and scheme: the server gets only the documents it completes. */
export function buildDocumentSelector(languages: readonly string[]): DocumentSelector {
    return languages.flatMap((language) => SCHEMES.map((scheme) => ({ scheme, language })));
}

/** The server's part of the configuration (server keys only), read through `get` (so defaults are included). */
export function serverSectionFrom(config: ConfigLike): Record<string, unknown> {
    const raw: Record<string, unknown> = {};
    for (const key of SERVER_KEYS) {
        const v = config.get<unknown>(key);
        if (v !== undefined) {
            raw[key] = v;
        }
    }
    return serverSection(raw) ?? {};
}

export function toProgressValue(params: WorkDoneProgressBegin | WorkDoneProgressReport | WorkDoneProgressEnd): ProgressValue {
    return params as ProgressValue;
}

export interface ClientHooks {
    /** The `repocomplete` configuration now (`vscode.workspace.getConfiguration(SECTION)` in the extension). */
    config(): ConfigLike;
    /** Whether completions are on now (read before each request, so a toggle takes effect at once). */
    isEnabled(): boolean;
    /** Status-bar events derived from `$/progress`. */
    onStatus(event: StatusEvent): void;
    /** Sends `workspace/didChangeConfiguration` (set once the client exists). */
    sendSettings(settings: Record<string, unknown>): Promise<void>;
}

/** The middleware: keep client-only settings from the server, skip requests while off, watch indexing progress. */
export function buildMiddleware(hooks: ClientHooks): Middleware {
    return {
        workspace: {
            // The server pulls `{section: "repocomplete"}`; answer with its keys only.
            configuration: async (params, token, next) => {
                const result = await next(params, token);
                if (!Array.isArray(result)) {
                    return result;
                }
                return result.map((value, i) => (params.items[i]?.section === SECTION ? serverSection(value) : value));
            },
            // Sent on a change of the section; a server that can pull pulls the section again in answer.
            didChangeConfiguration: async () => {
                await hooks.sendSettings({ [SECTION]: serverSectionFrom(hooks.config()) });
            },
        },
        provideInlineCompletionItems: (document, position, context, token, next) =>
            hooks.isEnabled() ? next(document, position, context, token) : null,
        provideCompletionItem: (document, position, context, token, next) =>
            hooks.isEnabled() ? next(document, position, context, token) : null,
        handleWorkDoneProgress: (token, params, next) => {
            hooks.onStatus({ kind: 'progress', token, value: toProgressValue(params) });
            next(token, params);
        },
    };
}

export function buildClientOptions(
    settings: Settings, hooks: ClientHooks, outputChannel: vscode.LogOutputChannel,
): LanguageClientOptions {
    return {
        documentSelector: buildDocumentSelector(settings.server.languages),
        initializationOptions: serverSectionFrom(hooks.config()),
        synchronize: { configurationSection: SECTION },
        outputChannel,
        revealOutputChannelOn: RevealOutputChannelOn.Never,
        middleware: buildMiddleware(hooks),
    };
}

type AnyFeature = StaticFeature | DynamicFeature<any>;

/** A LanguageClient that leaves the extension's own command names to the extension (see EXTENSION_COMMANDS). */
export class RepocompleteLanguageClient extends LanguageClient {
    override registerFeature(feature: AnyFeature): void {
        const dynamic = feature as Partial<DynamicFeature<any>>;
        // Called from LanguageClient's constructor: use no instance fields of this class here.
        if (dynamic.registrationType?.method === ExecuteCommandRequest.method && typeof dynamic.register === 'function') {
            const register = dynamic.register.bind(feature);
            dynamic.register = (data) => {
                const options = data.registerOptions ?? {};
                register({ ...data, registerOptions: { ...options, commands: withoutExtensionCommands(options.commands) } });
            };
        }
        super.registerFeature(feature);
    }
}

/** What the manager needs of a client (a LanguageClient, or a fake in tests). */
export interface ClientLike {
    readonly state: State;
    start(): Promise<void>;
    stop(timeout?: number): Promise<void>;
    dispose(timeout?: number): Promise<void>;
    onDidChangeState(listener: (e: { oldState: State; newState: State }) => void): vscode.Disposable;
    onNotification(method: string, handler: (params: any) => void): vscode.Disposable;
    sendRequest<P, R, E>(type: RequestType<P, R, E>, params: P, token?: vscode.CancellationToken): Promise<R>;
    sendNotification(type: typeof DidChangeConfigurationNotification.type, params: { settings: unknown }): Promise<void>;
}

export type ClientFactory = (settings: Settings, hooks: ClientHooks) => ClientLike;

export interface ManagerDeps {
    output: vscode.LogOutputChannel;
    readSettings(): Settings;
    config(): ConfigLike;
    onStatus(event: StatusEvent): void;
    /** Shown when the server cannot be started. */
    onStartFailed?(message: string): void;
    createClient?: ClientFactory;
}

export function defaultClientFactory(output: vscode.LogOutputChannel): ClientFactory {
    return (settings, hooks) => {
        const folder = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
        return new RepocompleteLanguageClient(
            CLIENT_ID, CLIENT_NAME,
            buildServerOptions(settings, { home: os.homedir(), workspaceFolder: folder }),
            buildClientOptions(settings, hooks, output),
        ) as unknown as ClientLike;
    };
}

const STOP_TIMEOUT_MS = 3000;

/** Starts, stops and restarts the client; one at a time. */
export class ServerManager implements vscode.Disposable {
    private client: ClientLike | undefined;
    private listeners: vscode.Disposable[] = [];
    private queue: Promise<unknown> = Promise.resolve();
    private readonly createClient: ClientFactory;

    constructor(private readonly deps: ManagerDeps) {
        this.createClient = deps.createClient ?? defaultClientFactory(deps.output);
    }

    get isRunning(): boolean {
        return this.client !== undefined && this.client.state === State.Running;
    }

    /** Start, stop and restart run one after another, in the order asked. */
    private serial<T>(op: () => Promise<T>): Promise<T> {
        const run = this.queue.then(op, op);
        this.queue = run.catch(() => undefined);
        return run;
    }

    start(): Promise<void> {
        return this.serial(() => this.doStart());
    }

    stop(): Promise<void> {
        return this.serial(() => this.doStop());
    }

    restart(): Promise<void> {
        return this.serial(async () => {
            this.deps.output.info('restarting the server');
            await this.doStop();
            await this.doStart();
        });
    }

    private async doStart(): Promise<void> {
        if (this.client !== undefined) {
            return;
        }
        const settings = this.deps.readSettings();
        for (const problem of settings.problems) {
            this.deps.output.warn(problem);
        }
        const hooks: ClientHooks = {
            config: () => this.deps.config(),
            isEnabled: () => this.deps.readSettings().server.enabled,
            onStatus: (e) => this.deps.onStatus(e),
            sendSettings: async (s) => {
                await this.client?.sendNotification(DidChangeConfigurationNotification.type, { settings: s });
            },
        };
        const client = this.createClient(settings, hooks);
        this.client = client;
        this.listeners.push(
            client.onNotification(STATUS_NOTIFICATION, (params: StatusParams) => this.deps.onStatus({ kind: 'status', params })),
            client.onDidChangeState(({ newState }) => {
                const state = newState === State.Running ? 'running' : newState === State.Starting ? 'starting' : 'stopped';
                this.deps.onStatus({ kind: 'client', state });
            }),
        );
        this.deps.onStatus({ kind: 'client', state: 'starting' });
        this.deps.output.info(`starting ${settings.client.serverPath} ${[...SERVE_ARGS, ...settings.client.serverArgs].join(' ')}`);
        try {
            await client.start();
        } catch (e) {
            const message = `cannot start the server (${settings.client.serverPath}): ${errorText(e)}`;
            this.deps.output.error(message);
            this.deps.onStatus({ kind: 'client', state: 'stopped', message });
            this.deps.onStartFailed?.(message);
            await this.doStop();
        }
    }

    private async doStop(): Promise<void> {
        const client = this.client;
        this.client = undefined;
        for (const d of this.listeners.splice(0)) {
            d.dispose();
        }
        if (client === undefined) {
            return;
        }
        try {
            if (client.state !== State.Stopped) {
                await client.stop(STOP_TIMEOUT_MS);
            }
        } catch (e) {
            this.deps.output.warn(`stopping the server: ${errorText(e)}`);
        }
        try {
            await client.dispose(STOP_TIMEOUT_MS);
        } catch {
            // already stopped
        }
    }

    /** `workspace/executeCommand` to the server; rejects if it is not running. */
    async executeCommand<R>(command: string, args: unknown[], token?: vscode.CancellationToken): Promise<R> {
        const client = this.client;
        if (client === undefined || client.state !== State.Running) {
            throw new Error('the repocomplete server is not running');
        }
        // By type, not by method name: with a name, vscode-jsonrpc sends every argument after it as a positional
        // parameter (an undefined token included), and the server would get `[params, null]`.
        const result = await client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args }, token);
        return result as R;
    }

    dispose(): void {
        void this.stop();
    }
}

export function errorText(e: unknown): string {
    if (e instanceof Error) {
        return e.message;
    }
    if (e && typeof e === 'object' && 'message' in e) {
        return String((e as { message: unknown }).message);
    }
    return String(e);
}
