/**
 * End to end, without VS Code: activate the extension (the compiled sources, and the esbuild bundle when it has been
 * built) against the stubbed VS Code API, with `repocomplete.serverPath` pointing at test/fixtures/fake-repocomplete,
 * a stand-in server speaking LSP on stdio. The real vscode-languageclient runs in between.
 */
import './setup';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CancellationTokenSource, commands, Position, Selection, testing, Uri, type FakeStatusBarItem } from './vscode';

const root = path.join(__dirname, '..', '..');
const fakeServer = path.join(root, 'test', 'fixtures', 'fake-repocomplete');
const bundle = path.join(root, 'dist', 'extension.js');

interface Extension {
    activate(context: { subscriptions: { dispose(): unknown }[] }): Promise<void>;
    deactivate(): Promise<void>;
}

interface FakeLog {
    pid: number;
    argv: string[];
    initialize: { initializationOptions: Record<string, unknown>; capabilities: any };
    configurations: unknown[][];
    didChangeConfiguration: { settings: Record<string, Record<string, unknown>> }[];
    inline: { uri: string; position: { line: number; character: number } }[];
    cancelled: unknown[];
    opened: string[];
    commands: { command: string; arguments: unknown[] }[];
}

async function until<T>(what: string, probe: () => T | undefined | false | Promise<T | undefined | false>, ms = 8000): Promise<T> {
    const end = Date.now() + ms;
    for (;;) {
        const v = await probe();
        if (v) {
            return v;
        }
        if (Date.now() > end) {
            const log = testing.outputChannels.flatMap((c) => c.lines).slice(-20).join('\n');
            throw new Error(`timed out waiting for ${what}; the output channel's last lines:\n${log}`);
        }
        await new Promise((r) => setTimeout(r, 10));
    }
}

function alive(pid: number): boolean {
    try {
        process.kill(pid, 0);
        return true;
    } catch {
        return false;
    }
}

const SERVER_KEYS = ['enabled', 'model', 'adapter', 'endpoint', 'context', 'contextBudget', 'maxTokens', 'multiline', 'monitors', 'candidates', 'debounceMs', 'languages', 'completionCacheBytes'];

function suite(name: string, modulePath: string) {
    describe(name, { skip: fs.existsSync(modulePath) ? false : `${path.relative(root, modulePath)} is not built` }, () => {
        let ext: Extension;
        const context = { subscriptions: [] as { dispose(): unknown }[] };
        let item: FakeStatusBarItem;
        // The fake server's record, through its `fake.log` command (registered in VS Code by the language client).
        const serverLog = async (): Promise<FakeLog> => {
            const log = (await commands.executeCommand('fake.log')) as FakeLog | undefined;
            if (log === undefined) {
                throw new Error('fake.log is not registered: no server is running');
            }
            return log;
        };

        before(async () => {
            testing.reset();
            testing.workspaceFolders = [{ uri: Uri.file(root), name: 'ext', index: 0 }];
            testing.set('repocomplete.serverPath', fakeServer);
            testing.set('repocomplete.serverArgs', ['--device', 'cpu']);
            testing.set('repocomplete.maxTokens', 32);
            // Fresh module instances for each suite (the compiled sources and the bundle each hold one manager).
            for (const key of Object.keys(require.cache)) {
                if (key.startsWith(path.join(root, 'out', 'src')) || key === bundle) {
                    delete require.cache[key];
                }
            }
            ext = require(modulePath) as Extension;
            await ext.activate(context);
            item = testing.statusBarItems[0];
        });

        after(async () => {
            await ext.deactivate();
            for (const d of context.subscriptions) {
                d.dispose();
            }
        });

        it('starts the server, and the status bar goes through indexing to ready with the model name', async () => {
            await until('ready after indexing', () => {
                const firstIndexing = item.texts.findIndex((t) => /indexing 0%/.test(t));
                return firstIndexing >= 0 && item.texts.slice(firstIndexing).some((t) => t.includes('fake-model'));
            });
            assert.ok(item.texts.some((t) => /indexing 50%/.test(t)), item.texts.join(' | '));
            assert.match(item.text, /fake-model/);
            assert.equal(item.command, 'repocomplete.toggle');
        });

        it('starts it as `<serverPath> serve <serverArgs>` and sends the server settings only', async () => {
            const log = await serverLog();
            assert.deepEqual(log.argv, ['serve', '--device', 'cpu']);
            assert.deepEqual(Object.keys(log.initialize.initializationOptions).sort(), [...SERVER_KEYS].sort());
            assert.equal(log.initialize.initializationOptions.maxTokens, 32);
            assert.equal(log.initialize.capabilities.window.workDoneProgress, true);
            assert.equal(log.initialize.capabilities.workspace.configuration, true);
            assert.ok(log.initialize.capabilities.textDocument.inlineCompletion, 'the client announces inline completion');
            const answer = log.configurations[0][0] as Record<string, unknown>;
            assert.deepEqual(Object.keys(answer).sort(), [...SERVER_KEYS].sort());
            assert.equal(answer.maxTokens, 32);
        });

        it('shows ghost text through the inline completion provider', async () => {
            assert.equal(testing.inlineProviders.length, 1);
            const provider = testing.inlineProviders[0].provider;
            const doc = { uri: Uri.file(path.join(root, 'x.py')), languageId: 'python', version: 1, getText: () => 'def f():\n    ' };
            testing.openDocument(doc);
            await until('didOpen at the server', async () => (await serverLog()).opened.includes(doc.uri.toString()));
            const result = await provider.provideInlineCompletionItems(doc, new Position(3, 4), { triggerKind: 1 }, new CancellationTokenSource().token);
            const items = Array.isArray(result) ? result : result.items;
            assert.equal(items.length, 1);
            assert.equal(items[0].insertText, 'completion()');
            const log = await serverLog();
            assert.deepEqual(log.inline.at(-1), { uri: Uri.file(path.join(root, 'x.py')).toString(), position: { line: 3, character: 4 } });
        });

        it('turns a cancelled request into $/cancelRequest', async () => {
            const provider = testing.inlineProviders[0].provider;
            const source = new CancellationTokenSource();
            const doc = { uri: Uri.file(path.join(root, 'x.py')), languageId: 'python', version: 1 };
            const pending = provider.provideInlineCompletionItems(doc, new Position(99, 0), { triggerKind: 1 }, source.token);
            await until('the request at the server', async () => (await serverLog()).inline.some((r) => r.position.line === 99));
            source.cancel();
            const log = await until('the cancellation at the server', async () => {
                const l = await serverLog();
                return l.cancelled.length > 0 && l;
            });
            assert.deepEqual(log.cancelled, [{ line: 99, character: 0 }]);
            await pending.catch(() => undefined);
        });

        it('shows the context of the completion at the cursor', async () => {
            const pos = new Position(7, 2);
            testing.activeTextEditor = {
                document: { uri: Uri.file(path.join(root, 'x.py')), languageId: 'python', getText: () => '' },
                selection: new Selection(pos, pos),
            };
            const content = (await commands.executeCommand('repocomplete.showContext')) as string;
            assert.match(content, /`pkg\/fake\.py` lines 1–2/);
            assert.match(content, /why: for file:\/\/.*x\.py:7/);
            assert.match(content, /42 prompt tokens/);
            const log = await serverLog();
            assert.deepEqual(log.commands.at(-1), {
                command: 'repocomplete.showContext',
                arguments: [{ uri: Uri.file(path.join(root, 'x.py')).toString(), position: { line: 7, character: 2 } }],
            });
        });

        it('toggle turns completions off in the status bar and at the server, and on again', async () => {
            const before = await serverLog(); // the client sent the section once at the start already
            await commands.executeCommand('repocomplete.toggle');
            assert.match(item.text, /off/);
            const log = await until('didChangeConfiguration and the pull after it', async () => {
                const l = await serverLog();
                return l.didChangeConfiguration.length > before.didChangeConfiguration.length
                    && l.configurations.length > before.configurations.length && l;
            });
            const sent = log.didChangeConfiguration.at(-1)!.settings;
            assert.equal(sent.repocomplete.enabled, false);
            assert.deepEqual(Object.keys(sent.repocomplete).sort(), [...SERVER_KEYS].sort());
            assert.equal((log.configurations.at(-1)![0] as Record<string, unknown>).enabled, false);
            await until('the server to say disabled', () => item.texts.at(-1)?.includes('off'));
            // While off, no request goes to the server.
            const provider = testing.inlineProviders[0].provider;
            const doc = { uri: Uri.file(path.join(root, 'x.py')), languageId: 'python', version: 1 };
            const count = log.inline.length;
            assert.equal(await provider.provideInlineCompletionItems(doc, new Position(1, 1), { triggerKind: 1 }, new CancellationTokenSource().token), null);
            assert.equal((await serverLog()).inline.length, count);
            await commands.executeCommand('repocomplete.toggle');
            await until('ready again', () => item.text.includes('fake-model'));
        });

        it('restart stops the server process and starts a new one', async () => {
            const before = (await serverLog()).pid;
            await commands.executeCommand('repocomplete.restartServer');
            const after = (await until('a new server', async () => {
                const l = await serverLog().catch(() => undefined);
                return l && l.pid !== before && l;
            })).pid;
            assert.notEqual(after, before);
            await until('the old server to exit', () => !alive(before));
            await until('ready after the restart', () => item.text.includes('fake-model'));
        });

        it('deactivate stops the server', async () => {
            const pid = (await serverLog()).pid;
            await ext.deactivate();
            await until('the server to exit', () => !alive(pid));
        });
    });
}

suite('end to end: compiled sources', path.join(root, 'out', 'src', 'extension.js'));
suite('end to end: the esbuild bundle', bundle);
