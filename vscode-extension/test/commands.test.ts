import './setup';
import * as assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';
import {
    fence,
    formatContext,
    registerCommands,
    SERVER_SHOW_CONTEXT,
    showContext,
    showContextArguments,
    toggle,
    toggleTarget,
    type ServerControl,
    type ShowContextResult,
} from '../src/commands';
import { commands, ConfigurationTarget, FakeOutputChannel, Position, Selection, testing, Uri, workspace } from './vscode';

beforeEach(() => testing.reset());

const RESULT: ShowContextResult = {
    completion: 'total += item.price * item.qty',
    records: [
        {
            path: 'inventory/models.py', start_line: 10, end_line: 24, kind: 'definition', score: 0.8123,
            why: 'imported as `Item` from inventory.models', text: 'class Item:\n    price: float\n    qty: int\n',
        },
        {
            path: 'inventory/util.py', start_line: 3, end_line: 3, kind: 'similar', score: 0.5,
            why: 'BM25 0.50 for the lines above', text: 'x = "```"',
        },
    ],
    prompt_tokens: 812,
    timings_ms: { context: 12.345, 'provider.imports': 3.2 },
    context_mode: 'repo',
    root: '/proj',
    root_reason: "the editor's workspace folder",
};

class FakeServer implements ServerControl {
    isRunning = true;
    calls: { command: string; args: unknown[] }[] = [];
    restarts = 0;
    answer: unknown = RESULT;
    fail: Error | undefined;
    async restart(): Promise<void> {
        this.restarts++;
    }
    async executeCommand<R>(command: string, args: unknown[]): Promise<R> {
        this.calls.push({ command, args });
        if (this.fail) {
            throw this.fail;
        }
        return this.answer as R;
    }
}

function editorAt(file: string, line: number, character: number) {
    const pos = new Position(line, character);
    testing.activeTextEditor = {
        document: { uri: Uri.file(file), languageId: 'python', getText: () => '' },
        selection: new Selection(pos, pos),
    };
}

describe('commands: toggle', () => {
    it('writes where the value is set now, else the user settings', () => {
        assert.equal(toggleTarget(undefined), ConfigurationTarget.Global);
        assert.equal(toggleTarget({ globalValue: false }), ConfigurationTarget.Global);
        assert.equal(toggleTarget({ globalValue: true, workspaceValue: false }), ConfigurationTarget.Workspace);
        assert.equal(toggleTarget({ workspaceValue: false, workspaceFolderValue: true }), ConfigurationTarget.WorkspaceFolder);
    });

    it('flips repocomplete.enabled and tells the configuration listeners', async () => {
        const seen: boolean[] = [];
        const sub = workspace.onDidChangeConfiguration((e) => seen.push(e.affectsConfiguration('repocomplete.enabled')));
        assert.equal(await toggle(), false);
        assert.equal(workspace.getConfiguration('repocomplete').get('enabled'), false);
        assert.deepEqual(testing.updates, [{ key: 'repocomplete.enabled', value: false, target: ConfigurationTarget.Global }]);
        assert.equal(await toggle(), true);
        assert.equal(workspace.getConfiguration('repocomplete').get('enabled'), true);
        assert.deepEqual(seen, [true, true]);
        sub.dispose();
    });

    it('flips the workspace value when the workspace sets it', async () => {
        testing.set('repocomplete.enabled', true, 'global');
        testing.set('repocomplete.enabled', false, 'workspace');
        assert.equal(await toggle(), true);
        assert.equal(testing.updates[0].target, ConfigurationTarget.Workspace);
        assert.equal(workspace.getConfiguration('repocomplete').inspect('enabled').globalValue, true);
        assert.equal(workspace.getConfiguration('repocomplete').get('enabled'), true);
    });

    it('is registered as repocomplete.toggle', async () => {
        registerCommands(new FakeServer(), new FakeOutputChannel('log') as any);
        assert.ok(testing.registeredCommands().includes('repocomplete.toggle'));
        await commands.executeCommand('repocomplete.toggle');
        assert.equal(workspace.getConfiguration('repocomplete').get('enabled'), false);
    });
});

describe('commands: show context', () => {
    it('formats records with their provenance', () => {
        const md = formatContext(RESULT, { uri: 'file:///proj/shop/cart.py', position: { line: 41, character: 8 }, languageId: 'python' });
        assert.match(md, /^# repocomplete: context/);
        assert.match(md, /`\/proj\/shop\/cart\.py` line 42, column 9/); // shown one-based
        assert.match(md, /2 records · 812 prompt tokens · context: repo/);
        assert.match(md, /\nworkspace `\/proj` \(the editor's workspace folder\)\n/);
        assert.match(md, /```python\ntotal \+= item\.price \* item\.qty\n```/);
        assert.match(md, /### 1\. `inventory\/models\.py` lines 10–24/);
        assert.match(md, /kind \*\*definition\*\* · score 0\.812 · why: imported as `Item` from inventory\.models/);
        assert.match(md, /```python\nclass Item:\n    price: float\n    qty: int\n```/);
        assert.match(md, /### 2\. `inventory\/util\.py` line 3\n/);
        // A record holding ``` gets a longer fence, so it cannot end the block early.
        assert.match(md, /````python\nx = "```"\n````/);
        assert.match(md, /\| context \| 12\.3 \|/);
        assert.match(md, /\| provider\.imports \| 3\.2 \|/);
        // In order of the records.
        assert.ok(md.indexOf('models.py') < md.indexOf('util.py'));
    });

    it('shows the context tokens against their budget, and the notes', () => {
        const md = formatContext({
            ...RESULT, context_tokens: 1019, context_budget: 1024,
            notes: ['context budget reduced from 4096 to 1024 tokens: the model\'s window is 8192 tokens'],
        }, { uri: 'file:///proj/a.py', position: { line: 0, character: 0 } });
        assert.match(md, /2 records · 812 prompt tokens · 1019\/1024 context tokens · context: repo/);
        assert.match(md, /_Note: context budget reduced from 4096 to 1024 tokens: the model's window is 8192 tokens_/);
        assert.doesNotMatch(formatContext(RESULT, { uri: 'file:///a.py', position: { line: 0, character: 0 } }), /Note:/);
    });

    it('says so when no completion was made and no records came', () => {
        const md = formatContext({ completion: null, records: [], prompt_tokens: 5, timings_ms: {} },
            { uri: 'file:///a.go', position: { line: 0, character: 0 } });
        assert.match(md, /No completion was made at this position/);
        assert.match(md, /No context records/);
        assert.match(md, /0 records/);
        assert.doesNotMatch(md, /## Timings/);
        assert.doesNotMatch(md, /workspace/); // no repository context: no root to name
    });

    it('keeps code spans and table cells whole whatever the text holds', () => {
        const md = formatContext({
            completion: null, prompt_tokens: 1, timings_ms: { 'a|b': 1 },
            records: [{ path: 'odd`name.py', start_line: 1, end_line: 1, kind: 'k', score: 1, why: 'two\nlines', text: '' }],
        }, { uri: 'file:///x.py', position: { line: 0, character: 0 } });
        assert.match(md, /\| a\\\|b \| 1\.0 \|/);
        assert.match(md, /### 1\. `` odd`name\.py `` line 1/);
        assert.match(md, /why: two lines/);
    });

    it('fences text that ends without a newline and text with long backtick runs', () => {
        assert.equal(fence('a'), '```\na\n```');
        assert.equal(fence('a\n', 'go'), '```go\na\n```');
        assert.equal(fence('`````'), '``````\n`````\n``````');
    });

    it('sends [{uri, position}] for the cursor and opens the answer as Markdown beside the editor', async () => {
        editorAt('/proj/shop/cart.py', 41, 8);
        const server = new FakeServer();
        const content = await showContext(server);
        assert.deepEqual(server.calls, [{
            command: SERVER_SHOW_CONTEXT,
            args: [{ uri: 'file:///proj/shop/cart.py', position: { line: 41, character: 8 } }],
        }]);
        assert.equal(testing.openedDocuments.length, 1);
        assert.equal(testing.openedDocuments[0].languageId, 'markdown');
        assert.equal(testing.openedDocuments[0].getText(), content);
        assert.match(content ?? '', /inventory\/models\.py/);
        assert.equal(testing.shownDocuments.length, 1);
        assert.equal((testing.shownDocuments[0].options as any).viewColumn, -2 /* Beside */);
    });

    it('asks for an editor when there is none', async () => {
        const server = new FakeServer();
        assert.equal(await showContext(server), undefined);
        assert.equal(server.calls.length, 0);
        assert.equal(testing.messages[0].level, 'info');
    });

    it('offers a restart when the server is not running', async () => {
        editorAt('/a.py', 0, 0);
        const server = new FakeServer();
        server.isRunning = false;
        assert.equal(await showContext(server), undefined);
        assert.equal(server.calls.length, 0);
        assert.equal(testing.messages[0].level, 'warning');
        assert.deepEqual(testing.messages[0].items, ['Restart Server']);
    });

    it('reports a failed request', async () => {
        editorAt('/a.py', 0, 0);
        const server = new FakeServer();
        server.fail = new Error('Invalid params: expected arguments');
        assert.equal(await showContext(server), undefined);
        assert.equal(testing.messages[0].level, 'error');
        assert.match(testing.messages[0].text, /expected arguments/);
        assert.equal(testing.openedDocuments.length, 0);
    });

    it('builds the server arguments', () => {
        assert.deepEqual(showContextArguments({ uri: 'file:///x', position: { line: 1, character: 2 }, languageId: 'go' }),
            [{ uri: 'file:///x', position: { line: 1, character: 2 } }]);
    });
});

describe('commands: registration', () => {
    it('registers toggle, showContext, restartServer and showLog; restart restarts the server', async () => {
        const server = new FakeServer();
        const output = new FakeOutputChannel('repocomplete');
        const disposables = registerCommands(server, output as any);
        assert.deepEqual(testing.registeredCommands().sort(),
            ['repocomplete.restartServer', 'repocomplete.showContext', 'repocomplete.showLog', 'repocomplete.toggle']);
        await commands.executeCommand('repocomplete.restartServer');
        assert.equal(server.restarts, 1);
        await commands.executeCommand('repocomplete.showLog');
        assert.equal(output.shown, 1);
        disposables.forEach((d) => d.dispose());
        assert.deepEqual(testing.registeredCommands(), []);
    });

    it('contributes the same commands in package.json', async () => {
        const fs = await import('node:fs');
        const path = await import('node:path');
        const manifest = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8'));
        const contributed = manifest.contributes.commands.map((c: { command: string }) => c.command).sort();
        registerCommands(new FakeServer(), new FakeOutputChannel('x') as any);
        assert.deepEqual(contributed, testing.registeredCommands().sort());
    });
});
