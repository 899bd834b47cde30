;; repocomplete in Emacs with eglot: completions through completion-at-point (company/corfu show them too).
(require 'eglot)
(add-to-list 'eglot-server-programs
             '((python-mode python-ts-mode js-mode typescript-ts-mode go-mode java-mode rust-mode)
               . ("repocomplete" "serve" :initializationOptions (:context "repo" :maxTokens 64))))
(add-hook 'python-mode-hook #'eglot-ensure)
