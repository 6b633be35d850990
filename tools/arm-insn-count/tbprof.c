/* QEMU TCG plugin: where a guest's instructions go, by translation block. At exit it writes one
 * line per executed block, "VADDR INSNS EXECUTIONS" (hex, decimal, decimal), to $TBPROF_OUT
 * (default tbprof.out); tools/arm-insn-count/profile maps the addresses to the binary's symbols.
 * Inline, non-atomic counters: exact for the thread that does the work, close for the rest. */
#include "qemu-plugin-min.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;
struct rec { uint64_t vaddr, n, execs; };
static struct rec **recs; static size_t nrecs, cap;
static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    struct rec *r = calloc(1, sizeof *r);
    r->vaddr = qemu_plugin_tb_vaddr(tb); r->n = qemu_plugin_tb_n_insns(tb);
    if (nrecs == cap) { cap = cap ? cap * 2 : 65536; recs = realloc(recs, cap * sizeof *recs); }
    recs[nrecs++] = r;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &r->execs, 1);
}
static void at_exit(qemu_plugin_id_t id, void *p) {
    const char *path = getenv("TBPROF_OUT"); FILE *f = fopen(path ? path : "tbprof.out", "w");
    for (size_t i = 0; i < nrecs; i++) if (recs[i]->execs) fprintf(f, "%llx %llu %llu\n", (unsigned long long)recs[i]->vaddr, (unsigned long long)recs[i]->n, (unsigned long long)recs[i]->execs);
    fclose(f);
}
QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
