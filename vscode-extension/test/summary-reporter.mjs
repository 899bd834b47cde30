// A node:test reporter that prints one closing line: "N passed, N failed" (", N skipped" when some were).
// Suites are not counted; a test file that fails to load counts as one failure.
export default async function* summary(source) {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    for await (const event of source) {
        if (event.type !== 'test:pass' && event.type !== 'test:fail') {
            continue;
        }
        const data = event.data;
        if (data.details?.type === 'suite' && event.type === 'test:pass') {
            continue;
        }
        if (data.skip !== undefined || data.todo !== undefined) {
            skipped++;
        } else if (event.type === 'test:pass') {
            passed++;
        } else if (data.details?.type !== 'suite' || data.details?.error?.failureType !== 'subtestsFailed') {
            failed++;
        }
    }
    yield `\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`;
}
