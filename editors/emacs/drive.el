;; Drives Emacs + eglot for tests/test_editors.py: open a file, ask our server for completions at a position
;; through eglot, write the candidates as JSON. Environment: RC_CMD (JSON list), RC_FILE, RC_LINE (1-based),
;; RC_COL (0-based), RC_OUT.
(require 'json)
(let* ((cmd (append (json-read-from-string (getenv "RC_CMD")) nil))
       (out (getenv "RC_OUT")))
  ;; The test's server: the snippet's entry, with the command pointing at the test model.
  (setq eglot-server-programs
        (cons `((python-mode) . (,@cmd :initializationOptions (:context "infile" :maxTokens 6 :debounceMs 0)))
              eglot-server-programs))
  (setq eglot-sync-connect 60)
  (condition-case err
      (progn
        (find-file (getenv "RC_FILE"))
        (python-mode)
        (apply #'eglot (eglot--guess-contact))  ; what eglot-ensure does once Emacs is idle
        (let ((deadline (+ (float-time) 60)))
          (while (and (not (eglot-current-server)) (< (float-time) deadline))
            (accept-process-output nil 0.2)))
        (goto-char (point-min))
        (forward-line (1- (string-to-number (getenv "RC_LINE"))))
        (move-to-column (string-to-number (getenv "RC_COL")))
        (let* ((server (eglot-current-server))
               (deadline (+ (float-time) 60))
               labels)
          ;; Until the model is loaded the server answers nothing; then completion-at-point's own request.
          (while (and (null labels) (< (float-time) deadline))
            (let* ((capf (eglot-completion-at-point))
                   (table (and capf (nth 2 capf)))
                   (items (and table (all-completions "" table))))
              (setq labels items))
            (unless labels (accept-process-output nil 0.5)))
          (with-temp-file out
            (insert (json-encode `((server . ,(if server t :json-false))
                                   (candidates . ,(vconcat (mapcar #'substring-no-properties labels)))))))))
    (error (with-temp-file out (insert (json-encode `((error . ,(format "%S" err)))))))))
(kill-emacs 0)
