// tunedock-llama: the few llama.cpp calls an export needs, as a command (Makefile: llama-cpp).
//
//   tunedock-llama quantize IN.gguf OUT.gguf FTYPE     llama.cpp's quantizer (FTYPE: 15 = Q4_K_M)
//   tunedock-llama tokenize MODEL.gguf                 stdin: one hex-encoded UTF-8 text a line;
//                                                      stdout: its token ids, special tokens parsed
//   tunedock-llama eos MODEL.gguf                      the vocabulary's end-of-sequence id
//   tunedock-llama generate MODEL.gguf N               stdin: prompt token ids a line; stdout: up
//                                                      to N greedy ids, stopping at end of generation
//
// A C program rather than ctypes: llama.h passes its parameter structs by value, and a Python
// copy of their layout would break silently on the next llama.cpp.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "llama.h"

static void quiet(enum ggml_log_level level, const char *text, void *data) {
    (void) data;
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static struct llama_model *load(const char *path, int vocab_only) {
    struct llama_model_params p = llama_model_default_params();
    p.vocab_only = vocab_only;
    struct llama_model *model = llama_model_load_from_file(path, p);
    if (!model) { fprintf(stderr, "cannot load %s\n", path); exit(2); }
    return model;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static char *line_in(size_t *cap, char *buf) {
    ssize_t n = getline(&buf, cap, stdin);
    if (n < 0) { free(buf); return NULL; }
    if (n > 0 && buf[n - 1] == '\n') buf[n - 1] = 0;
    return buf;
}

static int tokenize(const char *path) {
    struct llama_model *model = load(path, 1);
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    size_t cap = 0;
    char *line = NULL;
    while ((line = line_in(&cap, line)) != NULL) {
        size_t n = strlen(line) / 2;
        char *text = malloc(n + 1);
        for (size_t i = 0; i < n; i++) {
            int hi = hexval(line[2 * i]), lo = hexval(line[2 * i + 1]);
            if (hi < 0 || lo < 0) { fprintf(stderr, "not hex\n"); return 2; }
            text[i] = (char) (hi * 16 + lo);
        }
        int max = (int) n + 16;
        llama_token *ids = malloc(sizeof(llama_token) * max);
        int got = llama_tokenize(vocab, text, (int) n, ids, max, false, true);
        if (got < 0) { fprintf(stderr, "tokenize failed\n"); return 1; }
        for (int i = 0; i < got; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
        fflush(stdout);
        free(ids);
        free(text);
    }
    llama_model_free(model);
    return 0;
}

static int generate(const char *path, int n_new) {
    struct llama_model *model = load(path, 0);
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);
    size_t cap = 0;
    char *line = NULL;
    while ((line = line_in(&cap, line)) != NULL) {
        int max = 8192, n = 0;
        llama_token *ids = malloc(sizeof(llama_token) * (max + n_new));
        for (char *tok = strtok(line, " "); tok && n < max; tok = strtok(NULL, " ")) ids[n++] = atoi(tok);
        struct llama_context_params cp = llama_context_default_params();
        cp.n_ctx = n + n_new + 8;
        cp.n_batch = cp.n_ctx;
        cp.n_threads = cp.n_threads_batch = 2;
        struct llama_context *ctx = llama_init_from_model(model, cp);
        if (!ctx) { fprintf(stderr, "cannot make a context\n"); return 1; }
        struct llama_batch batch = llama_batch_get_one(ids, n);
        int out = 0;
        for (int step = 0; step < n_new; step++) {
            if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
            const float *logits = llama_get_logits_ith(ctx, -1);
            llama_token best = 0;
            for (int t = 1; t < n_vocab; t++) if (logits[t] > logits[best]) best = t;
            if (llama_vocab_is_eog(vocab, best)) break;
            printf(out++ ? " %d" : "%d", best);
            ids[n] = best;
            batch = llama_batch_get_one(&ids[n], 1);
            n++;
        }
        printf("\n");
        fflush(stdout);
        llama_free(ctx);
        free(ids);
    }
    llama_model_free(model);
    return 0;
}

int main(int argc, char **argv) {
    llama_log_set(quiet, NULL);
    llama_backend_init();
    if (argc == 5 && !strcmp(argv[1], "quantize")) {
        struct llama_model_quantize_params p = llama_model_quantize_default_params();
        p.ftype = (enum llama_ftype) atoi(argv[4]);
        p.nthread = 0;  // every core
        return llama_model_quantize(argv[2], argv[3], &p) == 0 ? 0 : 1;
    }
    if (argc == 3 && !strcmp(argv[1], "tokenize")) return tokenize(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "eos")) {
        struct llama_model *model = load(argv[2], 1);
        printf("%d\n", llama_vocab_eos(llama_model_get_vocab(model)));
        llama_model_free(model);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "generate")) return generate(argv[2], atoi(argv[3]));
    fprintf(stderr, "usage: tunedock-llama quantize IN OUT FTYPE | tokenize MODEL | eos MODEL | "
                    "generate MODEL N\n");
    return 2;
}
