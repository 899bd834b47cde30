import './setup';
import * as assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';
import { State } from 'vscode-languageclient/node';
import {
    buildClientOptions,
    buildDocumentSelector,
    buildMiddleware,
    buildServerOptions,
    CLIENT_ID,
    expandVariables,
    RepocompleteLanguageClient,
    ServerManager,
    serverSectionFrom,
    withoutExtensionCommands,
    type ClientHooks,
    type ClientLike,
} from '../src/client';
import { fromObject, readSettings, SECTION, SERVER_DEFAULTS, type Settings } from '../src/settings';
import type { StatusEvent } from '../src/statusBar';
import { CancellationTokenSource, EventEmitter, FakeOutputChannel, Position, testing, Uri, workspace } from './vscode';

beforeEach(() => testing.reset());

function settingsOf(obj: Record<string, unknown>): Settings {
    return readSettings(fromObject(obj));
}

function hooks(over: Partial<ClientHooks> = {}): ClientHooks & { events: StatusEvent[]; sent: unknown[] } {
    const events: StatusEvent[] = [];
    const sent: unknown[] = [];
    return {
        config: () => workspace.getConfiguration(SECTION),
        isEnabled: () => true,
        onStatus: (e) => events.push(e),
        sendSettings: async (s) => {
            sent.push(s);
        },
        events,
        sent,
        ...over,
    };
}

describe('client: server options', () => {
    it('starts `<serverPath> serve <serverArgs...>` with no --stdio and no transport', () => {
        const opts = buildServerOptions(settingsOf({ serverPath: '/opt/rc/bin/repocomplete', serverArgs: ['--device', 'cpu'] }),
            { home: '/home/u', workspaceFolder: '/proj', processEnv: { PATH: '/bin' } });
        assert.equal(opts.command, '/opt/rc/bin/repocomplete');
        assert.deepEqual(opts.args, ['serve', '--device', 'cpu']);
        assert.equal(opts.transport, undefined);
        assert.equal(opts.options?.cwd, '/proj');
        assert.deepEqual(opts.options?.env, { PATH: '/bin' });
    });

    it('defaults to `repocomplete serve`', () => {
        const opts = buildServerOptions(settingsOf({}), { home: '/h' });
        assert.equal(opts.command, 'repocomplete');
        assert.deepEqual(opts.args, ['serve']);
    });

    it('expands ~, ${userHome} and ${workspaceFolder}', () => {
        const env = { home: '/home/u', workspaceFolder: '/proj' };
        assert.equal(expandVariables('~/.venv/bin/repocomplete', env), '/home/u/.venv/bin/repocomplete');
        assert.equal(expandVariables('${workspaceFolder}/.venv/bin/repocomplete', env), '/proj/.venv/bin/repocomplete');
        assert.equal(expandVariables('${userHome}/x', env), '/home/u/x');
        assert.equal(expandVariables('a~b', env), 'a~b');
        assert.equal(expandVariables('${workspaceFolder}/x', { home: '/h' }), '${workspaceFolder}/x');
        const opts = buildServerOptions(settingsOf({ serverPath: '${workspaceFolder}/.venv/bin/repocomplete', serverArgs: ['--root', '${workspaceFolder}'] }), env);
        assert.equal(opts.command, '/proj/.venv/bin/repocomplete');
        assert.deepEqual(opts.args, ['serve', '--root', '/proj']);
    });
});

describe('client: client options', () => {
    it('selects the documents of the configured languages, on disk and untitled', () => {
        assert.deepEqual(buildDocumentSelector(['python', 'go']), [
            { scheme: 'file', language: 'python' }, { scheme: 'untitled', language: 'python' },
            { scheme: 'file', language: 'go' }, { scheme: 'untitled', language: 'go' },
        ]);
    });

    it('builds the selector from the languages setting and the initializationOptions from the section', () => {
        testing.set('repocomplete.languages', ['rust']);
        testing.set('repocomplete.maxTokens', 128);
        testing.set('repocomplete.serverPath', '/x/repocomplete');
        testing.set('repocomplete.trace.server', 'verbose');
        const h = hooks();
        const opts = buildClientOptions(readSettings(h.config()), h, new FakeOutputChannel('repocomplete') as any);
        assert.deepEqual(opts.documentSelector, [{ scheme: 'file', language: 'rust' }, { scheme: 'untitled', language: 'rust' }]);
        assert.deepEqual(opts.initializationOptions, { ...SERVER_DEFAULTS, maxTokens: 128, languages: ['rust'] });
        assert.deepEqual(opts.synchronize, { configurationSection: 'repocomplete' });
        assert.equal((opts.outputChannel as any).name, 'repocomplete');
    });

    it('serverSectionFrom reads the server keys only', () => {
        const got = serverSectionFrom(fromObject({ model: 'm', serverArgs: ['x'], trace: { server: 'off' } }));
        assert.deepEqual(got, { model: 'm' });
    });
});

describe('client: middleware', () => {
    const doc = { uri: Uri.file('/a.py'), languageId: 'python' };
    const pos = new Position(1, 2);

    it('answers workspace/configuration for "repocomplete" without the client-only keys', async () => {
        const mw = buildMiddleware(hooks());
        const params = { items: [{ section: 'repocomplete' }, { section: 'editor' }] };
        const full = { enabled: false, model: 'm', serverPath: '/x', serverArgs: [], trace: { server: 'off' } };
        const result = await mw.workspace!.configuration!(params, new CancellationTokenSource().token as any,
            () => [full, { fontSize: 12 }]);
        assert.deepEqual(result, [{ enabled: false, model: 'm' }, { fontSize: 12 }]);
    });

    it('sends didChangeConfiguration with the server keys under "repocomplete"', async () => {
        testing.set('repocomplete.multiline', true);
        testing.set('repocomplete.serverArgs', ['--x']);
        const h = hooks();
        const mw = buildMiddleware(h);
        let nextCalled = false;
        await mw.workspace!.didChangeConfiguration!(['repocomplete'], async () => {
            nextCalled = true;
        });
        assert.equal(nextCalled, false);
        assert.equal(h.sent.length, 1);
        const sent = h.sent[0] as Record<string, Record<string, unknown>>;
        assert.deepEqual(Object.keys(sent), ['repocomplete']);
        assert.equal(sent.repocomplete.multiline, true);
        assert.equal('serverArgs' in sent.repocomplete, false);
    });

    it('skips inline and ordinary completion requests while completions are off', async () => {
        let enabled = false;
        const mw = buildMiddleware(hooks({ isEnabled: () => enabled }));
        const calls: unknown[] = [];
        const token = new CancellationTokenSource().token;
        const next = (...args: unknown[]) => {
            calls.push(args);
            return { items: [] };
        };
        assert.equal(await mw.provideInlineCompletionItems!(doc as any, pos as any, {} as any, token as any, next as any), null);
        assert.equal(await mw.provideCompletionItem!(doc as any, pos as any, {} as any, token as any, next as any), null);
        assert.equal(calls.length, 0);
        enabled = true;
        assert.deepEqual(await mw.provideInlineCompletionItems!(doc as any, pos as any, {} as any, token as any, next as any), { items: [] });
        // The same token goes on, so a cancellation in VS Code still cancels the request.
        assert.equal((calls[0] as unknown[])[3], token);
    });

    it('turns $/progress into status events and passes it on', () => {
        const h = hooks();
        const mw = buildMiddleware(h);
        const passed: unknown[] = [];
        mw.handleWorkDoneProgress!('tok', { kind: 'report', percentage: 30, message: 'proj' }, (t, p) => passed.push([t, p]));
        assert.deepEqual(h.events, [{ kind: 'progress', token: 'tok', value: { kind: 'report', percentage: 30, message: 'proj' } }]);
        assert.equal(passed.length, 1);
    });
});

describe('client: the real LanguageClient', () => {
    function makeClient(): RepocompleteLanguageClient {
        const h = hooks();
        const settings = readSettings(h.config());
        return new RepocompleteLanguageClient(CLIENT_ID, 'repocomplete', buildServerOptions(settings, { home: '/h' }),
            buildClientOptions(settings, h, new FakeOutputChannel('repocomplete') as any));
    }
    const feature = (client: RepocompleteLanguageClient, method: string): any =>
        (client as any)._features.find((f: any) => f.registrationType?.method === method);

    it('leaves the extension\'s own command names out of the server\'s executeCommandProvider', () => {
        assert.deepEqual(withoutExtensionCommands(['repocomplete.showContext', 'repocomplete.stats']), ['repocomplete.stats']);
        assert.deepEqual(withoutExtensionCommands(undefined), []);
        const client = makeClient();
        // The extension has registered its command first, as activate() does.
        const { commands } = require('vscode');
        commands.registerCommand('repocomplete.showContext', () => undefined);
        const exec = feature(client, 'workspace/executeCommand');
        assert.ok(exec, 'the client has an executeCommand feature');
        // Without the filter VS Code would throw "command 'repocomplete.showContext' already exists" here.
        exec.initialize({ executeCommandProvider: { commands: ['repocomplete.showContext', 'repocomplete.stats'] } });
        assert.deepEqual(testing.registeredCommands().sort(), ['repocomplete.showContext', 'repocomplete.stats']);
    });

    it('registers an inline completion provider when the server advertises inlineCompletionProvider', async () => {
        const client = makeClient();
        const inline = feature(client, 'textDocument/inlineCompletion');
        assert.ok(inline, 'vscode-languageclient supports textDocument/inlineCompletion natively');
        const selector = buildDocumentSelector(['python']);
        inline.initialize({ inlineCompletionProvider: true }, selector);
        assert.equal(testing.inlineProviders.length, 1);
        // The request goes out with VS Code's cancellation token (which becomes $/cancelRequest when cancelled).
        const sent: unknown[][] = [];
        (client as any).sendRequest = async (...args: unknown[]) => {
            sent.push(args);
            return null;
        };
        const source = new CancellationTokenSource();
        const document = { uri: Uri.file('/proj/a.py'), languageId: 'python', version: 3 };
        await testing.inlineProviders[0].provider.provideInlineCompletionItems(
            document, new Position(4, 7), { triggerKind: 1, selectedCompletionInfo: undefined }, source.token);
        assert.equal(sent.length, 1);
        const [type, params, token] = sent[0] as [any, any, unknown];
        assert.equal(type.method, 'textDocument/inlineCompletion');
        assert.equal(params.textDocument.uri, 'file:///proj/a.py');
        assert.deepEqual(params.position, { line: 4, character: 7 });
        assert.equal(token, source.token);
    });

    it('does not send the request while completions are off', async () => {
        testing.set('repocomplete.enabled', false);
        const h = hooks({ isEnabled: () => readSettings(workspace.getConfiguration(SECTION)).server.enabled });
        const settings = readSettings(h.config());
        const client = new RepocompleteLanguageClient(CLIENT_ID, 'repocomplete', buildServerOptions(settings, { home: '/h' }),
            buildClientOptions(settings, h, new FakeOutputChannel('repocomplete') as any));
        feature(client, 'textDocument/inlineCompletion').initialize({ inlineCompletionProvider: true }, buildDocumentSelector(['python']));
        let sent = 0;
        (client as any).sendRequest = async () => {
            sent++;
            return null;
        };
        const r = await testing.inlineProviders[0].provider.provideInlineCompletionItems(
            { uri: Uri.file('/a.py'), languageId: 'python' }, new Position(0, 0), { triggerKind: 1 }, new CancellationTokenSource().token);
        assert.equal(r, null);
        assert.equal(sent, 0);
    });
});

class FakeClient implements ClientLike {
    state = State.Stopped;
    log: string[];
    notifications = new Map<string, (params: any) => void>();
    private stateEmitter = new EventEmitter<{ oldState: State; newState: State }>();
    requests: unknown[][] = [];
    startError: Error | undefined;
    constructor(public readonly n: number, log: string[]) {
        this.log = log;
    }
    private setState(s: State) {
        const old = this.state;
        this.state = s;
        this.stateEmitter.fire({ oldState: old, newState: s });
    }
    async start(): Promise<void> {
        this.log.push(`start ${this.n}`);
        this.setState(State.Starting);
        await new Promise((r) => setTimeout(r, 5));
        if (this.startError) {
            this.setState(State.Stopped);
            throw this.startError;
        }
        this.setState(State.Running);
    }
    async stop(): Promise<void> {
        this.log.push(`stop ${this.n}`);
        await new Promise((r) => setTimeout(r, 5));
        this.setState(State.Stopped);
    }
    async dispose(): Promise<void> {
        this.log.push(`dispose ${this.n}`);
    }
    onDidChangeState(listener: (e: { oldState: State; newState: State }) => void) {
        return this.stateEmitter.event(listener);
    }
    onNotification(method: string, handler: (params: any) => void) {
        this.notifications.set(method, handler);
        return { dispose: () => this.notifications.delete(method) };
    }
    async sendRequest(type: any, ...rest: unknown[]): Promise<any> {
        // A method name would make vscode-jsonrpc send the remaining arguments as positional parameters.
        assert.equal(typeof type, 'object', 'requests go by RequestType, not by method name');
        this.requests.push([type.method, rest[0]]);
        return { completion: null, records: [] };
    }
    async sendNotification(): Promise<void> {}
}

function manager(opts: { failStart?: boolean } = {}) {
    const log: string[] = [];
    const events: StatusEvent[] = [];
    const clients: FakeClient[] = [];
    const failures: string[] = [];
    const output = new FakeOutputChannel('repocomplete');
    const m = new ServerManager({
        output: output as any,
        readSettings: () => readSettings(workspace.getConfiguration(SECTION)),
        config: () => workspace.getConfiguration(SECTION),
        onStatus: (e) => events.push(e),
        onStartFailed: (msg) => failures.push(msg),
        createClient: (settings) => {
            const c = new FakeClient(clients.length + 1, log);
            log.push(`create ${c.n} ${settings.client.serverPath}`);
            if (opts.failStart) {
                c.startError = new Error('spawn repocomplete ENOENT');
            }
            clients.push(c);
            return c;
        },
    });
    return { m, log, events, clients, failures, output };
}

describe('client: server manager', () => {
    it('starts a client and passes its state and repocomplete/status on to the status bar', async () => {
        const { m, events, clients } = manager();
        await m.start();
        assert.equal(m.isRunning, true);
        assert.equal(clients.length, 1);
        clients[0].notifications.get('repocomplete/status')!({ state: 'ready', model: 'smollm', message: '', percentage: null });
        const kinds = events.map((e) => (e.kind === 'client' ? `client:${e.state}` : e.kind === 'status' ? `status:${e.params.state}` : e.kind));
        assert.deepEqual(kinds, ['client:starting', 'client:starting', 'client:running', 'status:ready']);
    });

    it('restart stops the running client, then starts a new one with the settings of now', async () => {
        const { m, log, clients } = manager();
        await m.start();
        testing.set('repocomplete.serverPath', '/new/repocomplete');
        await m.restart();
        assert.deepEqual(log, ['create 1 repocomplete', 'start 1', 'stop 1', 'dispose 1', 'create 2 /new/repocomplete', 'start 2']);
        assert.equal(clients[0].state, State.Stopped);
        assert.equal(clients[0].notifications.size, 0, 'the old client\'s handlers are gone');
        assert.equal(m.isRunning, true);
    });

    it('runs start, restart and stop one after another', async () => {
        const { m, log } = manager();
        const all = [m.start(), m.restart(), m.stop()];
        await Promise.all(all);
        assert.deepEqual(log, ['create 1 repocomplete', 'start 1', 'stop 1', 'dispose 1', 'create 2 repocomplete', 'start 2', 'stop 2', 'dispose 2']);
        assert.equal(m.isRunning, false);
    });

    it('a second start while running does nothing', async () => {
        const { m, clients } = manager();
        await m.start();
        await m.start();
        assert.equal(clients.length, 1);
    });

    it('reports a server that cannot be started', async () => {
        const { m, events, failures, output, log } = manager({ failStart: true });
        await m.start();
        assert.equal(m.isRunning, false);
        assert.equal(failures.length, 1);
        assert.match(failures[0], /cannot start the server \(repocomplete\): spawn repocomplete ENOENT/);
        assert.ok(output.lines.some((l) => l.startsWith('[error]') && l.includes('ENOENT')));
        const last = events.filter((e) => e.kind === 'client').pop();
        assert.deepEqual(last, { kind: 'client', state: 'stopped', message: failures[0] });
        assert.ok(log.includes('dispose 1'));
    });

    it('logs settings problems when it starts', async () => {
        testing.set('repocomplete.maxTokens', 0);
        const { m, output } = manager();
        await m.start();
        assert.ok(output.lines.some((l) => l.startsWith('[warn] repocomplete.maxTokens must be')));
    });

    it('executeCommand sends workspace/executeCommand, and refuses while the server is down', async () => {
        const { m, clients } = manager();
        await assert.rejects(m.executeCommand('repocomplete.showContext', []), /not running/);
        await m.start();
        const args = [{ uri: 'file:///a.py', position: { line: 0, character: 1 } }];
        await m.executeCommand('repocomplete.showContext', args);
        assert.deepEqual(clients[0].requests, [['workspace/executeCommand', { command: 'repocomplete.showContext', arguments: args }]]);
    });
});
