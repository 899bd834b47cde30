import './setup';
import * as assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
    initialState,
    reduce,
    RESTART_COMMAND,
    StatusBar,
    TOGGLE_COMMAND,
    view,
    type StatusEvent,
    type StatusState,
} from '../src/statusBar';
import { FakeStatusBarItem, ThemeColor } from './vscode';

function run(events: StatusEvent[], start: StatusState = initialState('default', true)): StatusState {
    return events.reduce(reduce, start);
}

const status = (state: any, extra: Record<string, unknown> = {}): StatusEvent =>
    ({ kind: 'status', params: { state, model: 'smollm', message: '', percentage: null, ...extra } });

describe('status bar: server notifications', () => {
    it('starts as "starting"', () => {
        const v = view(initialState('default', true));
        assert.equal(v.shown, 'starting');
        assert.match(v.text, /repocomplete/);
        assert.equal(v.command, TOGGLE_COMMAND);
    });

    it('goes starting -> indexing NN% -> ready (model name)', () => {
        let s = initialState('default', true);
        s = reduce(s, status('starting', { message: 'loading smollm' }));
        assert.equal(view(s).shown, 'starting');
        assert.match(view(s).tooltip, /loading smollm/);
        s = reduce(s, status('indexing', { percentage: 0, message: 'indexing proj' }));
        assert.equal(view(s).shown, 'indexing');
        assert.match(view(s).text, /indexing 0%/);
        s = reduce(s, status('indexing', { percentage: 42.4 }));
        assert.match(view(s).text, /indexing 42%/);
        s = reduce(s, status('ready'));
        const v = view(s);
        assert.equal(v.shown, 'ready');
        assert.match(v.text, /smollm/);
        assert.doesNotMatch(v.text, /indexing/);
        assert.match(v.tooltip, /ready, model smollm/);
        assert.equal(v.background, null);
    });

    it('shows indexing without a number when the server gives none', () => {
        const v = view(run([status('indexing', { percentage: null })]));
        assert.equal(v.shown, 'indexing');
        assert.doesNotMatch(v.text, /%/);
    });

    it('keeps the model it knew when a status has none', () => {
        const s = run([status('ready'), { kind: 'status', params: { state: 'ready' } }]);
        assert.equal(s.model, 'smollm');
    });

    it('shows "off" for disabled, with a click that turns completions on', () => {
        const v = view(run([status('ready'), status('disabled')]));
        assert.equal(v.shown, 'off');
        assert.match(v.text, /off/);
        assert.equal(v.command, TOGGLE_COMMAND);
        assert.match(v.tooltip, /turn completions on/);
    });

    it('shows errors with the message, an error background and a click that restarts the server', () => {
        const v = view(run([status('error', { message: 'cannot load model x: no such file' })]));
        assert.equal(v.shown, 'error');
        assert.equal(v.command, RESTART_COMMAND);
        assert.equal(v.background, 'error');
        assert.match(v.tooltip, /no such file/);
    });

    it('ignores a status it does not know', () => {
        const s = run([status('ready')]);
        assert.equal(reduce(s, status('sleeping')), s);
        assert.equal(reduce(s, { kind: 'status', params: undefined as any }), s);
    });
});

describe('status bar: $/progress', () => {
    const begin = (token: string, percentage?: number): StatusEvent =>
        ({ kind: 'progress', token, value: { kind: 'begin', title: 'repocomplete: indexing', percentage } });
    const report = (token: string, percentage?: number, message?: string): StatusEvent =>
        ({ kind: 'progress', token, value: { kind: 'report', percentage, message } });
    const end = (token: string): StatusEvent => ({ kind: 'progress', token, value: { kind: 'end' } });

    it('shows indexing from begin and report, and stops at end', () => {
        let s = run([status('ready'), begin('t1', 0)]);
        assert.equal(view(s).shown, 'indexing');
        assert.match(view(s).text, /0%/);
        s = reduce(s, report('t1', 57, 'proj'));
        assert.match(view(s).text, /57%/);
        assert.match(view(s).tooltip, /proj/);
        s = reduce(s, report('t1')); // a report without a percentage keeps the last one
        assert.match(view(s).text, /57%/);
        s = reduce(s, end('t1'));
        assert.equal(view(s).shown, 'ready');
        assert.deepEqual(s.progressTokens, []);
    });

    it('clamps percentages to 0..100', () => {
        assert.match(view(run([begin('t', 140)])).text, /100%/);
        assert.match(view(run([begin('t', -3)])).text, /0%/);
    });

    it('ignores report and end for tokens that never began', () => {
        const s = run([status('ready')]);
        assert.equal(reduce(s, report('nope', 50)), s);
        assert.equal(reduce(s, end('nope')), s);
    });

    it('stays indexing until every token has ended', () => {
        let s = run([status('ready'), begin('a', 10), begin('b', 20)]);
        s = reduce(s, end('a'));
        assert.equal(view(s).shown, 'indexing');
        s = reduce(s, end('b'));
        assert.equal(view(s).shown, 'ready');
    });

    it('a server status other than indexing does not end progress that is still running', () => {
        const s = run([begin('a', 10), status('ready')]);
        assert.equal(view(s).shown, 'indexing');
        assert.equal(view(reduce(s, end('a'))).shown, 'ready');
    });
});

describe('status bar: client state and the enabled setting', () => {
    it('shows off at once when completions are turned off, and the server state again when on', () => {
        let s = run([status('ready')]);
        s = reduce(s, { kind: 'enabled', enabled: false });
        assert.equal(view(s).shown, 'off');
        s = reduce(s, { kind: 'enabled', enabled: true });
        assert.equal(view(s).shown, 'ready');
    });

    it('off wins over indexing, error wins over off', () => {
        const off = run([status('indexing', { percentage: 5 }), { kind: 'enabled', enabled: false }]);
        assert.equal(view(off).shown, 'off');
        assert.equal(view(reduce(off, status('error', { message: 'boom' }))).shown, 'error');
    });

    it('a stopped client is an error; starting again clears it and any indexing', () => {
        let s = run([status('ready'), { kind: 'progress', token: 1, value: { kind: 'begin', percentage: 30 } }]);
        s = reduce(s, { kind: 'client', state: 'stopped' });
        assert.equal(view(s).shown, 'error');
        assert.match(view(s).tooltip, /not running/);
        s = reduce(s, { kind: 'client', state: 'starting' });
        assert.equal(view(s).shown, 'starting');
        assert.equal(s.indexing, null);
        assert.deepEqual(s.progressTokens, []);
        s = reduce(s, { kind: 'client', state: 'running' });
        assert.equal(view(s).shown, 'starting'); // until the server says ready
        s = reduce(s, status('ready'));
        assert.equal(view(s).shown, 'ready');
    });

    it('a failed start keeps its message', () => {
        const s = run([{ kind: 'client', state: 'stopped', message: 'spawn repocomplete ENOENT' }]);
        assert.match(view(s).tooltip, /ENOENT/);
    });
});

describe('status bar: the item', () => {
    it('applies the view to the StatusBarItem', () => {
        const item = new FakeStatusBarItem('repocomplete.status');
        const bar = new StatusBar(item as any, 'default', true);
        assert.equal(item.visible, true);
        assert.match(item.text, /repocomplete/);
        bar.update(status('indexing', { percentage: 12 }));
        assert.match(item.text, /indexing 12%/);
        assert.equal(item.command, TOGGLE_COMMAND);
        bar.update(status('error', { message: 'x' }));
        assert.equal(item.command, RESTART_COMMAND);
        assert.ok(item.backgroundColor instanceof ThemeColor);
        assert.equal((item.backgroundColor as ThemeColor).id, 'statusBarItem.errorBackground');
        bar.update(status('ready'));
        assert.equal(item.backgroundColor, undefined);
        assert.match(item.text, /smollm/);
        bar.dispose();
        assert.equal(item.disposed, true);
    });

    it('starts "off" when completions are off', () => {
        const item = new FakeStatusBarItem('x');
        new StatusBar(item as any, 'default', false);
        assert.match(item.text, /off/);
    });
});
