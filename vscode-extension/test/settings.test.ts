import './setup';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import {
    CLIENT_DEFAULTS,
    DEFAULT_LANGUAGES,
    fromObject,
    needsRestart,
    RANGES,
    readSettings,
    SERVER_DEFAULTS,
    SERVER_KEYS,
    serverSection,
} from '../src/settings';

const manifest = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8'));
const properties: Record<string, any> = manifest.contributes.configuration.properties;

describe('settings: defaults come from package.json', () => {
    // Their values are held to the server's owners by tests/test_extension_settings.py.
    it('reads an empty configuration as the defaults, with no problems', () => {
        const s = readSettings(fromObject({}));
        assert.deepEqual(s.server, { ...SERVER_DEFAULTS });
        assert.deepEqual(s.client, { ...CLIENT_DEFAULTS });
        assert.deepEqual(s.problems, []);
        for (const key of SERVER_KEYS) {
            assert.deepEqual(s.server[key], properties[`repocomplete.${key}`].default, key);
        }
    });

    it('package.json contributes every setting the extension reads, and no other', () => {
        const expected = [...SERVER_KEYS, 'serverPath', 'serverArgs', 'trace.server'].map((k) => `repocomplete.${k}`);
        assert.deepEqual(Object.keys(properties).sort(), expected.sort());
        for (const key of Object.keys(properties)) {
            assert.ok('default' in properties[key], key);
            assert.ok(properties[key].description || properties[key].markdownDescription, key);
        }
    });

    it('package.json declares the types the extension validates', () => {
        for (const key of Object.keys(RANGES)) {
            assert.equal(properties[`repocomplete.${key}`].type, 'integer', key);
        }
        assert.deepEqual(properties['repocomplete.adapter'].type, ['string', 'null']);
        assert.deepEqual(properties['repocomplete.endpoint'].type, ['string', 'null']);
        assert.equal(properties['repocomplete.enabled'].type, 'boolean');
        assert.equal(properties['repocomplete.multiline'].type, 'boolean');
        assert.equal(properties['repocomplete.languages'].items.type, 'string');
    });

    it('package.json activates on the default languages', () => {
        const events: string[] = manifest.activationEvents;
        for (const lang of DEFAULT_LANGUAGES) {
            assert.ok(events.includes(`onLanguage:${lang}`), lang);
        }
    });
});

describe('settings: validation', () => {
    it('keeps valid values', () => {
        const s = readSettings(fromObject({
            enabled: false, model: '/models/x.gguf', adapter: '/lora', endpoint: 'http://127.0.0.1:8080', context: 'infile',
            contextBudget: 0, maxTokens: 4096, multiline: true, monitors: 'deref,args', candidates: 8, debounceMs: 5000, languages: ['python', 'python', 'go'],
            completionCacheBytes: 0,
            serverPath: '/opt/bin/repocomplete', serverArgs: ['--device', 'cpu', '--device', 'cpu'], trace: { server: 'verbose' },
        }));
        assert.deepEqual(s.problems, []);
        assert.deepEqual(s.server, {
            enabled: false, model: '/models/x.gguf', adapter: '/lora', endpoint: 'http://127.0.0.1:8080', context: 'infile',
            contextBudget: 0, maxTokens: 4096, multiline: true, monitors: 'deref,args', candidates: 8, debounceMs: 5000, languages: ['python', 'go'],
            completionCacheBytes: 0,
        });
        // Arguments keep their repeats; languages do not.
        assert.deepEqual(s.client, { serverPath: '/opt/bin/repocomplete', serverArgs: ['--device', 'cpu', '--device', 'cpu'], traceServer: 'verbose' });
    });

    const bad: [string, unknown, string][] = [
        ['enabled', 'yes', 'true or false'],
        ['model', '   ', 'a non-empty string'],
        ['model', 3, 'a non-empty string'],
        ['adapter', 7, 'a string or null'],
        ['context', 'global', 'one of none, infile, repo'],
        ['contextBudget', 32769, 'an integer in [0, 32768]'],
        ['contextBudget', -1, 'an integer in [0, 32768]'],
        ['maxTokens', 0, 'an integer in [1, 4096]'],
        ['maxTokens', 1.5, 'an integer in [1, 4096]'],
        ['maxTokens', '64', 'an integer in [1, 4096]'],
        ['debounceMs', 5001, 'an integer in [0, 5000]'],
        ['candidates', 0, 'an integer in [1, 8]'],
        ['candidates', 9, 'an integer in [1, 8]'],
        ['multiline', 1, 'true or false'],
        ['languages', [], 'a non-empty list of languageIds'],
        ['languages', ['python', 3], 'a non-empty list of languageIds'],
        ['languages', 'python', 'a non-empty list of languageIds'],
        ['serverPath', '', 'a non-empty string'],
        ['serverArgs', ['--x', 1], 'a list of strings'],
    ];
    for (const [key, value, want] of bad) {
        it(`rejects ${key} = ${JSON.stringify(value)} and uses the default`, () => {
            const s = readSettings(fromObject({ [key]: value }));
            assert.equal(s.problems.length, 1, s.problems.join('\n'));
            assert.match(s.problems[0], new RegExp(`^repocomplete\\.${key} must be ${want.replace(/[[\]()]/g, '\\$&')}`));
            const got = key in SERVER_DEFAULTS ? (s.server as any)[key] : (s.client as any)[key];
            const def = key in SERVER_DEFAULTS ? (SERVER_DEFAULTS as any)[key] : (CLIENT_DEFAULTS as any)[key];
            assert.deepEqual(got, def);
        });
    }

    it('rejects an unknown trace level', () => {
        const s = readSettings(fromObject({ 'trace.server': 'loud' }));
        assert.equal(s.client.traceServer, 'off');
        assert.match(s.problems[0], /trace\.server must be one of off, messages, verbose/);
    });

    it('reads null as unset, except for adapter and endpoint where it means none', () => {
        const s = readSettings(fromObject({ model: null, maxTokens: null, adapter: null, endpoint: '' }));
        assert.deepEqual(s.problems, []);
        assert.equal(s.server.model, SERVER_DEFAULTS.model);
        assert.equal(s.server.maxTokens, SERVER_DEFAULTS.maxTokens);
        assert.equal(s.server.adapter, null);
        assert.equal(s.server.endpoint, null); // "" is "none", as the server reads it
    });

    it('trims the server path', () => {
        assert.equal(readSettings(fromObject({ serverPath: '  /x/repocomplete ' })).client.serverPath, '/x/repocomplete');
    });
});

describe('settings: what the server gets', () => {
    it('serverSection keeps the server keys only, values as written', () => {
        const raw = {
            enabled: true, model: 'm', maxTokens: 'lots', languages: ['go'], serverPath: '/x', serverArgs: ['-v'],
            trace: { server: 'verbose' }, somethingElse: 1,
        };
        assert.deepEqual(serverSection(raw), { enabled: true, model: 'm', maxTokens: 'lots', languages: ['go'] });
    });

    it('serverSection answers null for what is not an object', () => {
        assert.equal(serverSection(null), null);
        assert.equal(serverSection([1]), null);
        assert.equal(serverSection('x'), null);
    });

    it('needsRestart for the server command line and the languages only', () => {
        const changed = (keys: string[]) => (section: string) =>
            keys.some((k) => k === section || k.startsWith(`${section}.`));
        assert.equal(needsRestart(changed(['repocomplete.serverPath'])), true);
        assert.equal(needsRestart(changed(['repocomplete.serverArgs'])), true);
        assert.equal(needsRestart(changed(['repocomplete.languages'])), true);
        assert.equal(needsRestart(changed(['repocomplete.maxTokens'])), false);
        assert.equal(needsRestart(changed(['repocomplete.enabled'])), false);
        assert.equal(needsRestart(changed(['editor.fontSize'])), false);
    });
});
